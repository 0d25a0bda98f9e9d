// The cost target: one CoMiGS-1G1S expert step (E = 2, k = 2: attention LoRA, router,
// the fused two-expert MLP, load balancing, AdamW) against one single-LoRA step (attention LoRA
// and a LoRA on both MLP layers, built from the plain ops), both on the shipped base model at the
// default training batch. Interleaved rounds (the machine drifts), ratio = median of per-round
// ratios. Before timing, both models must reproduce the frozen base's loss (lora_B = 0 makes
// every adapter a no-op) and stay finite over a few steps.
import type { Command, Engine } from "../engine/device.ts";
import { AdamW } from "../model/optim.ts";
import { Tape, zeroGrad } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { gelu } from "../kernels/gelu.ts";
import { loraLinear } from "../kernels/lora.ts";
import { type AdapterConfig, AdapterTensors, initAdapters } from "../model/adapters.ts";
import { loadGpt2Checkpoint } from "../model/gpt2_checkpoint.ts";
import { forwardAdapted, Gpt2Mixture } from "../model/comigs.ts";
import { GPT2 } from "../model/gpt2.ts";
import { TokenBatch } from "../model/batch.ts";

const MODEL = new URL("../models/base", import.meta.url).pathname;
const B = 8, T = 128;
/** Equal to the frozen base's loss up to f32 reassociation of the (zero) LoRA terms. */
const SAME_LOSS = 1e-4;

/** LoRA on attention and on both MLP layers: the usual single-adapter fine-tuning. */
class SingleLora extends Gpt2Mixture {
  override mlp(tape: Tape, block: number, x: Tensor): Tensor {
    const { fcA, fcB, projA, projB } = this.adapters.blocks[block].experts;
    const flat = (t: Tensor) => tape.reshape(t, t.shape.slice(1));
    const fc = `h.${block}.mlp.c_fc`, proj = `h.${block}.mlp.c_proj`;
    const h = gelu(
      tape,
      loraLinear(tape, x, this.model.linear(tape, x, fc), flat(fcA), flat(fcB), this.scale),
    );
    return loraLinear(
      tape,
      h,
      this.model.linear(tape, h, proj),
      flat(projA),
      flat(projB),
      this.scale,
    );
  }
}

interface Step {
  commands: () => Command[];
  loss: Tensor;
  dispose: () => void;
}

function buildStep(engine: Engine, model: GPT2, batch: TokenBatch, experts: number): Step {
  const config: AdapterConfig = {
    rank: 8,
    alpha: 16,
    scaling: "rslora",
    topK: 2,
    experts: new Array(model.config.n_layer).fill(experts),
    lbCoef: 0.01,
    lbRho: 0.5,
  };
  const adapters = new AdapterTensors(
    engine,
    model.config,
    config,
    initAdapters(model.config, config, 1),
  );
  const params = adapters.loraParams();
  for (const p of params) p.requiresGrad = true;
  const tape = new Tape(engine);
  // The single LoRA trains on its loss; the mixture on its loss + λ·LB.
  const { loss, objective } = experts === 1
    ? { ...model.forward(tape, batch, new SingleLora(model, adapters)), objective: undefined }
    : forwardAdapted(tape, model, adapters, batch);
  const body = [...zeroGrad(params), ...tape.forward(), ...tape.backward(objective ?? loss)];
  const opt = new AdamW(engine, params, { lr: 2e-3, betas: [0.9, 0.95], weightDecay: 0.01 });
  return {
    commands: () => [...body, ...opt.step()],
    loss,
    dispose: () => {
      opt.dispose();
      tape.dispose();
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

export async function comigsVsLoraStep(
  engine: Engine,
  opts: { runs: number },
): Promise<Record<string, unknown>[]> {
  const { config, weights } = await loadGpt2Checkpoint(MODEL);
  const model = new GPT2(engine, config, weights);
  const batch = new TokenBatch(engine, config, B, T);
  let seed = 7;
  const next = () => (seed = (seed * 1103515245 + 12345) >>> 0) % config.vocab_size;
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
    for (let round = 0; round < opts.runs; round++) {
      const [c, l] = round % 2 === 0
        ? [await stepMs(engine, comigs), await stepMs(engine, lora)]
        : [await stepMs(engine, lora), await stepMs(engine, comigs)].reverse();
      comigsMs.push(c);
      loraMs.push(l);
      ratios.push(c / l);
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
    const round3 = (x: number) => Math.round(x * 1000) / 1000;
    return [{
      kernel: "comigs_vs_lora_step",
      config: "base",
      B,
      T,
      ratio: round3(median(ratios)),
      ms: round3(median(comigsMs)),
      lora_ms: round3(median(loraMs)),
      tokens_per_s: Math.round(B * T / (median(comigsMs) / 1000)),
      runs: opts.runs,
      ok,
      adapter: engine.adapterName,
    }];
  } finally {
    comigs.dispose();
    lora.dispose();
    baseTape.dispose();
    batch.dispose();
    model.dispose();
  }
}
