// The public API of comigs. Everything exported here is promised; nothing else is.

// Engine: device, tensors, autograd, optimiser.
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
export { AdamW, type AdamWOptions, type AdamWState, type ParamGroup } from "./engine/optim.ts";

// Operations (forward and backward), one per kernel file.
export { add } from "./kernels/add.ts";
export { attention } from "./kernels/attention.ts";
export { crossEntropy, crossEntropyWithRowLosses } from "./kernels/cross_entropy.ts";
export { embedding, IndexInput, splitRows } from "./kernels/embedding.ts";
export { copy, fill, scale } from "./kernels/fill.ts";
export { gelu } from "./kernels/gelu.ts";
export { layerNorm } from "./kernels/layernorm.ts";
export { loadBalance } from "./kernels/load_balance.ts";
export { loraLinear } from "./kernels/lora.ts";
export { matmul, type MatmulOptions } from "./kernels/matmul.ts";
export { moeMlp, type MoeMlpWeights } from "./kernels/moe_mlp.ts";
export { softmax } from "./kernels/softmax.ts";
export { mean, sum, sumRows } from "./kernels/sum.ts";
export { topkGate } from "./kernels/topk_gate.ts";

// GPT-2: model, checkpoints, tokenizers.
export { type BlockAdapters, GPT2, GPT2Batch, type GPT2Output } from "./model/gpt2.ts";
export { type GPT2Config, parameterCount, parameterShapes } from "./model/config.ts";
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
export { loadTokenizer, type Tokenizer } from "./model/tokenizer.ts";
export { saveBpe, trainBpe } from "./model/bpe_train.ts";

// CoMiGS: adapters (attention LoRA, LoRA experts, routers) and the adapted forward pass.
export {
  type AdapterConfig,
  type AdapterFile,
  AdapterTensors,
  encodeAdapters,
  initAdapters,
  loadAdapters,
  loraScale,
  saveAdapters,
} from "./model/adapters.ts";
export { type AdaptedOutput, forwardAdapted } from "./model/comigs.ts";
export { StreamEvaluator } from "./model/evaluate.ts";
export { StreamCapture } from "./model/stream_capture.ts";

// Federation: messages, aggregation, strategy, clients, methods, scenarios, whole runs.
export { decodeMessage, encodeMessage, type Message } from "./fed/message.ts";
export { aggregate, type Weighting } from "./fed/aggregate.ts";
export { FedAvgStrategy, type Instructions, PclStrategy, type Strategy } from "./fed/strategy.ts";
export { Client, type ClientData, type ClientState, type Schedule } from "./fed/client.ts";
export { type Method, METHOD_SPECS, METHODS, type MethodSpec } from "./fed/methods.ts";
export { type ClientCorpus, loadScenario, type Scenario, SCENARIOS } from "./fed/scenarios.ts";
export {
  type Checkpoint,
  federate,
  type FederationHooks,
  finalTestPpl,
  type MetricRecord,
  runStreams,
  type Streams,
  summarise,
  type Summary,
  type TrainOptions,
} from "./fed/federation.ts";
export {
  type ClientEndpoint,
  LocalEndpoint,
  makeClient,
  makeStrategy,
  runRounds,
} from "./fed/federation.ts";
export { type RunResult, runTraining, serveRun } from "./fed/run.ts";
export { type JoinOptions, joinRun } from "./fed/join.ts";
export { clientLoop, MemoryStates, runInfo, type StateStore } from "./fed/client_loop.ts";
