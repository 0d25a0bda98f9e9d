// The cost target: one CoMiGS-1G1S expert step (E = 2, k = 2: attention LoRA, router,
// the fused two-expert MLP, load balancing, AdamW) against one single-LoRA step (attention LoRA
// and a LoRA on every MLP layer, built from the plain ops), both at the default training batch,
// for each family: GPT-2 on the shipped base model (models/base), the Llama family at the shipped
// Llama base's configuration (models/base-llama when it is there, else that configuration with
// random weights: timing does not depend on the weights). Interleaved rounds (the machine
// drifts), ratio = median of per-round ratios. Before timing, both models must reproduce the
// frozen base's loss (lora_B = 0 makes every adapter a no-op) and stay finite over a few steps.
import type { Command, Engine } from "../engine/device.ts";
import { AdamW } from "../model/optim.ts";
import { Tape, zeroGrad } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { gelu } from "../kernels/gelu.ts";
import { loraLinear } from "../kernels/lora.ts";
import { swiglu } from "../kernels/swiglu.ts";
import { type AdapterConfig, AdapterTensors, initAdapters } from "../model/adapters.ts";
import { dimsOf } from "../model/base.ts";
import type { BaseModel, ModelOutput } from "../model/base_model.ts";
import { loadBaseCheckpoint } from "../model/checkpoint.ts";
import { fileExists } from "../model/file_exists.ts";
import { forwardAdapted, Gpt2Mixture } from "../model/comigs.ts";
import { GPT2 } from "../model/gpt2.ts";
import { initBaseWeights } from "../model/init.ts";
import { Llama } from "../model/llama.ts";
import { LlamaMixture } from "../model/llama_comigs.ts";
import type { LlamaConfig } from "../model/llama_config.ts";
import { createModel } from "../model/load.ts";
import { TokenBatch } from "../model/batch.ts";
import { median, round3 } from "./interleave.ts";

const B = 8, T = 128;
/** Equal to the frozen base's loss up to f32 reassociation of the (zero) LoRA terms. */
const SAME_LOSS = 1e-4;

/** The shipped Llama base's configuration (cli/pretrain.ts --arch llama, as models/base-llama). */
export const BASE_LLAMA: LlamaConfig = {
  model_type: "llama",
  hidden_size: 128,
  intermediate_size: 344,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  rope_scaling: null,
  max_position_embeddings: 128,
  vocab_size: 4096,
  tie_word_embeddings: true,
  attention_bias: false,
  bos_token_id: null,
  eos_token_id: 4095,
};

/** The base models compared: each record's `config`, and how to put the model on the engine. */
export const BASES: { config: string; load: (engine: Engine) => Promise<BaseModel> }[] = [
  { config: "base", load: (engine) => loadFolder(engine, "base") },
  {
    config: "base-llama",
    load: async (engine) =>
      await fileExists(`${modelDir("base-llama")}/config.json`)
        ? loadFolder(engine, "base-llama")
        : createModel(engine, BASE_LLAMA, initBaseWeights(BASE_LLAMA, 1)),
  },
];

function modelDir(name: string): string {
  return new URL(`../models/${name}`, import.meta.url).pathname;
}

async function loadFolder(engine: Engine, name: string): Promise<BaseModel> {
  const { config, weights } = await loadBaseCheckpoint(modelDir(name));
  return createModel(engine, config, weights);
}

/** `frozen`, the base layer's output on x, plus one expert's LoRA from its [1, rows, cols] stacks. */
function withLora(tape: Tape, x: Tensor, frozen: Tensor, a: Tensor, b: Tensor, scale: number) {
  const flat = (t: Tensor) => tape.reshape(t, t.shape.slice(1));
  return loraLinear(tape, x, frozen, flat(a), flat(b), scale);
}

/** GPT-2 with LoRA on attention and on both MLP layers: the usual single-adapter fine-tuning. */
class Gpt2SingleLora extends Gpt2Mixture {
  override mlp(tape: Tape, block: number, x: Tensor): Tensor {
    const { fcA, fcB, projA, projB } = this.adapters.blocks[block].experts;
    const prefix = `h.${block}.mlp`;
    const layer = (input: Tensor, name: string, a: Tensor, b: Tensor) =>
      withLora(tape, input, this.model.linear(tape, input, `${prefix}.${name}`), a, b, this.scale);
    return layer(gelu(tape, layer(x, "c_fc", fcA, fcB)), "c_proj", projA, projB);
  }
}

/** A Llama with LoRA on q, k, v, o and on gate, up and down: the usual single adapter. */
class LlamaSingleLora extends LlamaMixture {
  override mlp(tape: Tape, block: number, m: Tensor): Tensor {
    const { gateA, gateB, upA, upB, downA, downB } = this.adapters.blocks[block].experts;
    const prefix = `model.layers.${block}.mlp`;
    const layer = (input: Tensor, name: string, a: Tensor, b: Tensor) =>
      withLora(tape, input, this.model.linear(tape, input, `${prefix}.${name}`), a, b, this.scale);
    const h = swiglu(tape, layer(m, "gate_proj", gateA, gateB), layer(m, "up_proj", upA, upB));
    return layer(h, "down_proj", downA, downB);
  }
}

function singleLoraForward(
  tape: Tape,
  model: BaseModel,
  adapters: AdapterTensors,
  batch: TokenBatch,
): ModelOutput {
  if (model instanceof GPT2) return model.forward(tape, batch, new Gpt2SingleLora(model, adapters));
  if (model instanceof Llama) {
    return model.forward(tape, batch, new LlamaSingleLora(model, adapters));
  }
  throw new Error(`comigs_vs_lora_step: no single-LoRA model for ${model.constructor.name}`);
}

/** What both steps train: rank 8, α 16 (rsLoRA), top-2 of `experts` per block, λ 0.01, ρ 0.5. */
export function benchAdapterConfig(layers: number, experts: number): AdapterConfig {
  return {
    rank: 8,
    alpha: 16,
    scaling: "rslora",
    topK: 2,
    experts: new Array(layers).fill(experts),
    lbCoef: 0.01,
    lbRho: 0.5,
  };
}

/** The steps' AdamW (scripts/torch_llama_step.py's ADAMW is the same; bench/gpt2_vs_torch.ts
 * gives it to bench/torch_gpt2_step.py). */
export const BENCH_ADAMW = { lr: 2e-3, betas: [0.9, 0.95], eps: 1e-8, weightDecay: 0.01 } as const;

export interface Step {
  /** The step's commands (zero grads, forward, backward, AdamW): one submit. */
  commands: () => Command[];
  /** The step's forward commands alone (recorded for training: no backward, no update). */
  forward: Command[];
  /** [1]: the step's cross-entropy (without λ·LB). */
  loss: Tensor;
  /** [1]: what the step minimises (the mixture's loss + λ·LB; the single LoRA's loss). */
  objective: Tensor;
  /** Frees the step's tape and optimiser (not the adapters). */
  dispose: () => void;
}

/**
 * Times `steps` replays of `step`, one submit each, waiting for each (seconds per step), and
 * whether its objective is still finite after them.
 */
export async function timedSteps(
  engine: Engine,
  step: Step,
  steps: number,
): Promise<{ seconds: number[]; finite: boolean }> {
  const seconds: number[] = [];
  for (let s = 0; s < steps; s++) {
    const t0 = performance.now();
    await engine.run(step.commands(), "timed step");
    await engine.sync();
    seconds.push((performance.now() - t0) / 1000);
  }
  return { seconds, finite: Number.isFinite((await engine.readF32(step.objective))[0]) };
}

/**
 * One training step of `adapters`' LoRA tensors on the frozen `model`, built once: CoMiGS's
 * expert step (forwardAdapted: the mixture, trained on loss + λ·LB; the routers frozen), or with
 * `single` the single LoRA's (one expert per block, built from the plain ops, trained on its loss).
 */
export function trainingStep(
  engine: Engine,
  model: BaseModel,
  adapters: AdapterTensors,
  batch: TokenBatch,
  single = false,
): Step {
  const params = adapters.loraParams();
  for (const p of params) p.requiresGrad = true;
  const tape = new Tape(engine);
  const { loss, objective } = single
    ? { ...singleLoraForward(tape, model, adapters, batch), objective: undefined }
    : forwardAdapted(tape, model, adapters, batch);
  const target = objective ?? loss;
  const forward = tape.forward();
  const pass = [...forward, ...tape.backward(target)];
  const opt = new AdamW(engine, params, BENCH_ADAMW);
  return {
    forward,
    // After backward: the gradient tensors exist only once it has been recorded, and zeroGrad
    // clears those that exist (before, it returned nothing and gradients summed over steps).
    commands: () => [...zeroGrad(params), ...pass, ...opt.step()],
    loss,
    objective: target,
    dispose: () => {
      opt.dispose();
      tape.dispose();
    },
  };
}

/** A step with fresh adapters of `experts` per block (1: the single LoRA), which it owns. */
function buildStep(engine: Engine, model: BaseModel, batch: TokenBatch, experts: number): Step {
  const config = benchAdapterConfig(dimsOf(model.config).layers, experts);
  const init = initAdapters(model.config, config, 1);
  const adapters = new AdapterTensors(engine, model.config, config, init);
  const step = trainingStep(engine, model, adapters, batch, experts === 1);
  return {
    ...step,
    dispose: () => {
      step.dispose();
      adapters.dispose();
    },
  };
}

async function stepMs(engine: Engine, step: Step): Promise<number> {
  const t0 = performance.now();
  await engine.run(step.commands(), "comigs bench step");
  await engine.sync();
  return performance.now() - t0;
}

/** One `kernel` record per base model of BASES, each from `measure` on that base (then freed). */
export async function perBase(
  engine: Engine,
  kernel: string,
  measure: (model: BaseModel) => Promise<Record<string, unknown>>,
): Promise<Record<string, unknown>[]> {
  const records: Record<string, unknown>[] = [];
  for (const base of BASES) {
    const model = await base.load(engine);
    try {
      records.push({ kernel, config: base.config, ...await measure(model) });
    } finally {
      model.dispose();
    }
  }
  return records;
}

export function comigsVsLoraStep(
  engine: Engine,
  opts: { runs: number },
): Promise<Record<string, unknown>[]> {
  return perBase(engine, "comigs_vs_lora_step", (model) => compare(engine, model, opts.runs));
}

/** One family's record: both steps checked, then timed in interleaved rounds. */
async function compare(
  engine: Engine,
  model: BaseModel,
  runs: number,
): Promise<Record<string, unknown>> {
  const batch = new TokenBatch(engine, model.config, B, T);
  const vocab = dimsOf(model.config).vocab;
  let seed = 7;
  const next = () => (seed = (seed * 1103515245 + 12345) >>> 0) % vocab;
  batch.set(Array.from({ length: B }, () => Array.from({ length: T + 1 }, next)));
  const baseTape = new Tape(engine);
  const baseLoss = baseTape.noGrad(() => model.forward(baseTape, batch).loss);
  await engine.run(baseTape.forward(), "base loss");
  const reference = (await engine.readF32(baseLoss))[0];
  const comigs = buildStep(engine, model, batch, 2);
  const lora = buildStep(engine, model, batch, 1);
  try {
    let ok = true;
    for (const step of [comigs, lora]) {
      await engine.run(step.commands(), "check");
      ok &&= Math.abs((await engine.readF32(step.loss))[0] - reference) < SAME_LOSS;
      for (let s = 0; s < 3; s++) await engine.run(step.commands(), "check");
      ok &&= Number.isFinite((await engine.readF32(step.loss))[0]);
    }
    const ratios: number[] = [], comigsMs: number[] = [], loraMs: number[] = [];
    for (let round = 0; round < runs; round++) {
      const [c, l] = round % 2 === 0
        ? [await stepMs(engine, comigs), await stepMs(engine, lora)]
        : [await stepMs(engine, lora), await stepMs(engine, comigs)].reverse();
      comigsMs.push(c);
      loraMs.push(l);
      ratios.push(c / l);
    }
    return {
      B,
      T,
      ratio: round3(median(ratios)),
      ms: round3(median(comigsMs)),
      lora_ms: round3(median(loraMs)),
      tokens_per_s: Math.round(B * T / (median(comigsMs) / 1000)),
      runs,
      ok,
      adapter: engine.adapterName,
    };
  } finally {
    comigs.dispose();
    lora.dispose();
    baseTape.dispose();
    batch.dispose();
  }
}
