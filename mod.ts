// The public API of comigs. Everything exported here is promised; nothing else is.

// Engine: device, tensors, autograd; the kernel family.
export { type Command, Engine, type EngineOptions } from "./engine/device.ts";
export { chooseKernelVariant, type KernelVariant, kernelVariant } from "./kernels/variant.ts";
export {
  DeviceLostError,
  GpuError,
  LimitError,
  NoAdapterError,
  ShaderCompileError,
  ShapeError,
} from "./engine/errors.ts";
export { type DType, Tensor } from "./engine/tensor.ts";
export {
  type BackwardContext,
  type GradTarget,
  type OpDecl,
  Tape,
  zeroGrad,
} from "./engine/tape.ts";

// Operations (forward and backward), one per kernel file.
export { add } from "./kernels/add.ts";
export { attention, groupedAttention } from "./kernels/attention.ts";
export { crossEntropy, crossEntropyWithRowLosses } from "./kernels/cross_entropy.ts";
export { embedding } from "./kernels/embedding.ts";
export { copy, fill, scale } from "./kernels/fill.ts";
export { gelu } from "./kernels/gelu.ts";
export { layerNorm } from "./kernels/layernorm.ts";
export { loadBalance } from "./kernels/load_balance.ts";
export { loraLinear } from "./kernels/lora.ts";
export { matmul, type MatmulOptions } from "./kernels/matmul.ts";
export {
  chooseMixtureDispatch,
  type MixtureDispatch,
  type MixtureOptions,
} from "./kernels/mixture.ts";
export { moeMlp, type MoeMlpWeights } from "./kernels/moe_mlp.ts";
export { moeSwiglu, type MoeSwigluWeights } from "./kernels/moe_swiglu.ts";
export { rmsNorm } from "./kernels/rmsnorm.ts";
export { rope, ropeTable } from "./kernels/rope.ts";
export { swiglu } from "./kernels/swiglu.ts";
export { softmax } from "./kernels/softmax.ts";
export { mean, sum, sumRows } from "./kernels/sum.ts";
export { topkGate } from "./kernels/topk_gate.ts";

// Models: GPT-2, checkpoints, tokenizers, optimiser, schedule, progress, errors.
export { type BlockAdapters, GPT2, type GPT2Output } from "./model/gpt2.ts";
export { TokenBatch } from "./model/batch.ts";
export { type GPT2Config, parameterShapes } from "./model/config.ts";
export {
  type BaseCheckpoint,
  loadBaseCheckpoint,
  parseBaseCheckpoint,
  saveBaseCheckpoint,
} from "./model/checkpoint.ts";
export {
  CheckpointError,
  type NamedTensor,
  readSafetensors,
  writeSafetensors,
} from "./model/safetensors.ts";
export { loadTokenizer } from "./model/tokenizer.ts";
export { type TextStream, type Tokenizer, TokenizerError } from "./model/tokenizer_contract.ts";
export { saveBpe, trainBpe } from "./model/bpe_train.ts";
export { AdamW, type AdamWOptions, type AdamWState, type ParamGroup } from "./model/optim.ts";
export { cosineLr } from "./model/schedule.ts";
export { type Progress, type ProgressUpdate, silentProgress } from "./model/progress.ts";
export { OptionError } from "./model/option_error.ts";
export { type AdapterSource, createModel, type LoadedModel, loadModel } from "./model/load.ts";
export {
  type BaseConfig,
  type BaseDims,
  baseParameterShapes,
  dimsOf,
  type Family,
  familyOf,
  parameterCount,
} from "./model/base.ts";
export type { BaseModel, ModelOutput } from "./model/base_model.ts";
export { Llama, type LlamaBlockAdapters } from "./model/llama.ts";
export { type LlamaConfig, parseLlamaConfig } from "./model/llama_config.ts";
export { loadModelTokenizer } from "./model/tokenizer.ts";
export { HubError, modelFolder, pinnedModel } from "./model/model_source.ts";
export { downloadModel, type HubOptions, type HubProgress } from "./model/hub.ts";
export { generate, GENERATE_DEFAULTS, type GenerateOptions } from "./model/generate.ts";
export {
  type EvalRecord,
  pretrain,
  PRETRAIN_DEFAULTS,
  type PretrainOptions,
  type PretrainTexts,
} from "./model/pretrain.ts";

// CoMiGS: adapters (attention LoRA, LoRA experts, routers) and the adapted forward pass.
export {
  type AdapterConfig,
  type AdapterFile,
  AdapterTensors,
  decodeAdapters,
  encodeAdapters,
  initAdapters,
  loadAdapters,
  loraScale,
  saveAdapters,
} from "./model/adapters.ts";
export { type AdaptedOutput, forwardAdapted } from "./model/comigs.ts";
export { StreamEvaluator } from "./model/evaluate.ts";
export { StreamCapture } from "./model/stream_capture.ts";

// Federation: options, clients, strategies, the rounds, transports on either side, whole runs.
export {
  resolveTrainOptions,
  TRAIN_DEFAULTS,
  type TrainOptions,
  type TrainOptionsInput,
} from "./fed/options.ts";
export { type Method, METHOD_SPECS, METHODS, type MethodSpec } from "./fed/methods.ts";
export { type ClientCorpus, loadScenario, type Scenario, SCENARIOS } from "./fed/scenarios.ts";
export { runStreams, type Streams } from "./fed/streams.ts";
export { decodeMessage, encodeMessage, type Message } from "./fed/message.ts";
export { aggregate, type Weighting } from "./fed/aggregate.ts";
export { type Refusal, type UpdateExpectation, validateUpdate } from "./fed/validate_update.ts";
export { RdpAccountant } from "./fed/accountant.ts";
export { FedAvgStrategy, type Instructions, type Strategy } from "./fed/strategy.ts";
export { PclStrategy } from "./fed/pcl.ts";
export {
  Client,
  type ClientData,
  type ClientState,
  type Schedule,
  type StepReport,
} from "./fed/client.ts";
export { makeClient, makeStrategy } from "./fed/factories.ts";
export {
  type ClientEndpoint,
  type EvaluateReply,
  type FitReply,
  LocalEndpoint,
} from "./fed/endpoint.ts";
export { type RoundHooks, runRounds } from "./fed/rounds.ts";
export {
  type Checkpoint,
  federate,
  type FederationHooks,
  type FederationResult,
} from "./fed/simulation.ts";
export {
  finalTestPpl,
  type Measurement,
  type MetricRecord,
  summarise,
  type Summary,
} from "./fed/records.ts";
export { type Join, type Reply, type ServerLink, type Task } from "./fed/server_link.ts";
export { clientLoop, MemoryStates, type StateStore } from "./fed/client_loop.ts";
export { HttpServerLink, runInfo } from "./fed/http_link.ts";
export { type RunHooks, type RunResult, runTraining, serveRun } from "./fed/run.ts";
export { type JoinOptions, joinRun } from "./fed/join.ts";
export { StateFiles } from "./fed/state_files.ts";

// Flower: a comigs client as a node of a Flower SuperLink (the Fleet API of flwr 1.42, no
// Python on the device), its ServerLink, and the whole node's life in Deno.
export {
  FlowerNode,
  FlowerNodeError,
  type FlowerNodeOptions,
  type FlowerReply,
  type FlowerTask,
} from "./fed/flower/node.ts";
export { type FlowerRun, FlowerServerLink } from "./fed/flower/link.ts";
export {
  type FlowerNodeResult,
  flowerNodeRun,
  type FlowerNodeRunOptions,
} from "./fed/flower/node_run.ts";
export {
  FLOWER_METHODS,
  type NodeLocalOptions,
  nodeTrainOptions,
  RunConfigError,
} from "./fed/flower/run_options.ts";
export {
  exportPrivateKeyPem,
  generateNodeKeys,
  importPrivateKeyPem,
  type NodeKeys,
  publicKeyOpenSsh,
} from "./fed/flower/node_keys.ts";
export { FlowerConnectionError, FlowerRequestError } from "./fed/flower/fleet_http.ts";
export { FlowerVersionError, FLWR_VERSION } from "./fed/flower/version.ts";
