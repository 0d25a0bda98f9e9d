// A full GPT-2 training step (zero grads, forward, backward, AdamW) as training runs it: built
// once on a tape, replayed as ONE submit per step. Reports tokens/s for the reference config of
// the issue and for the shipped base-model config, and how much of the step the matrix products
// take (a submit holding only the step's matmul dispatches, their operand packing included).
// Before timing, each case proves the step trains: the first loss is ≈ ln(vocab) for a fresh
// init and the loss falls over a few steps on one fixed batch.
//
//   deno run -A bench/train_step.ts [--runs N] [--breakdown]
//
// --breakdown also times the step's commands grouped by op (one submit per group) and prints
// the groups by cost.
import { parseArgs } from "node:util";
import { type Command, Engine } from "../engine/device.ts";
import { AdamW } from "../model/optim.ts";
import { Tape, zeroGrad } from "../engine/tape.ts";
import { parameterCount } from "../model/base.ts";
import type { GPT2Config } from "../model/config.ts";
import { GPT2 } from "../model/gpt2.ts";
import { TokenBatch } from "../model/batch.ts";
import { initWeights } from "../model/init.ts";
import { kernelVariant } from "../kernels/variant.ts";
import { Mulberry32 } from "../model/rng.ts";
import type { Step } from "./comigs_step.ts";

export interface StepSpec {
  config: string;
  model: GPT2Config;
  B: number;
  T: number;
}

/** The reference config: 4 layers, 4 heads, d 256, vocab 8192, 8 × 128 tokens. */
export const REF_5_3M: StepSpec = {
  config: "ref-5.3M",
  model: {
    n_layer: 4,
    n_head: 4,
    n_embd: 256,
    vocab_size: 8192,
    n_positions: 128,
    layer_norm_epsilon: 1e-5,
  },
  B: 8,
  T: 128,
};

const SPECS: StepSpec[] = [
  REF_5_3M,
  {
    config: "base",
    model: {
      n_layer: 4,
      n_head: 4,
      n_embd: 128,
      vocab_size: 4096,
      n_positions: 128,
      layer_norm_epsilon: 1e-5,
    },
    B: 16,
    T: 128,
  },
];

export interface TrainStepOptions {
  /** Timed submits per measurement; the median is reported (default 5). */
  runs?: number;
  /** Also time the step's commands grouped by op (adds a `breakdown` field). */
  breakdown?: boolean;
}

/** The full step's AdamW, on every parameter (bench/torch_gpt2_step.py is given the same). */
export const TRAIN_ADAMW = { lr: 1e-3, betas: [0.9, 0.95], eps: 1e-8, weightDecay: 0.1 } as const;

// A fresh init gives logits of variance ≈ 0.02²·n_embd (0.1 here), so the first loss is
// ln(V) + ~0.05: 0.5 nats of slack still catches a broken init or loss.
const FIRST_LOSS_SLACK = 0.5;
// Memorising one batch with TRAIN_ADAMW lowers the loss by ~0.3–1 nats in CHECK_STEPS
// steps; requiring 0.05 only rules out a step that does not train.
const CHECK_STEPS = 5;
const MIN_DECREASE = 0.05;

export async function trainStepCases(
  engine: Engine,
  opts: TrainStepOptions = {},
): Promise<Record<string, unknown>[]> {
  const results: Record<string, unknown>[] = [];
  for (const spec of SPECS) results.push(await measureStep(engine, spec, opts));
  return results;
}

async function measureStep(
  engine: Engine,
  spec: StepSpec,
  opts: TrainStepOptions,
): Promise<Record<string, unknown>> {
  const runs = opts.runs ?? 5;
  const { model: config, B, T } = spec;
  const model = new GPT2(engine, config, initWeights(config, 1));
  const batch = new TokenBatch(engine, config, B, T);
  batch.set(randomSequences(B, T + 1, config.vocab_size, 42));
  const { commands: step, body, loss, dispose } = fullTrainingStep(engine, model, batch);
  try {
    const losses: number[] = [];
    for (let s = 0; s < CHECK_STEPS; s++) {
      await engine.run(step(), "train step");
      losses.push((await engine.readF32(loss))[0]);
    }
    const ok = losses.every(Number.isFinite) &&
      Math.abs(losses[0] - Math.log(config.vocab_size)) <= FIRST_LOSS_SLACK &&
      losses[losses.length - 1] <= losses[0] - MIN_DECREASE;

    const matmuls = body.filter(isMatmul);
    const stepMs = await medianMs(engine, step, runs);
    const matmulMs = await medianMs(engine, () => matmuls, runs);
    const tokens = B * T;
    return {
      kernel: "train_step",
      config: spec.config,
      variant: kernelVariant(engine),
      B,
      T,
      params: parameterCount(config),
      tokens_per_s: round(tokens / (stepMs / 1000)),
      ms: round(stepMs),
      matmul_ms: round(matmulMs),
      matmul_share: round(matmulMs / stepMs),
      losses: losses.map(round),
      ...(opts.breakdown ? { breakdown: await breakdown(engine, step(), runs) } : {}),
      runs,
      ok,
      adapter: engine.adapterName,
    };
  } finally {
    dispose();
    batch.dispose();
    model.dispose();
  }
}

/** A training step of every parameter of `model` on `batch`, built once (one submit a step). */
export function fullTrainingStep(
  engine: Engine,
  model: GPT2,
  batch: TokenBatch,
): Step & { body: Command[] } {
  model.setTrainable(true);
  const params = [...model.params.values()];
  const opt = new AdamW(engine, params, TRAIN_ADAMW);
  const tape = new Tape(engine);
  const { loss } = model.forward(tape, batch);
  const forward = tape.forward();
  const body = [...forward, ...tape.backward(loss)];
  return {
    // zeroGrad after backward is recorded: only then do the gradient tensors exist to clear.
    commands: () => [...zeroGrad(params), ...body, ...opt.step()],
    forward,
    body,
    loss,
    objective: loss,
    dispose: () => {
      opt.dispose();
      tape.dispose();
    },
  };
}

/** The matrix products of a step: forward, dA and dB blocks and their operand packing. */
function isMatmul(command: Command): boolean {
  if (command.kind !== "dispatch") return false;
  return /^(pack )?matmul( dA| dB)?( [AB]$| \()/.test(command.label);
}

/** The op a command belongs to, for the breakdown (layer and parameter names dropped). */
function opGroup(command: Command): string {
  const label = command.label;
  if (label.startsWith("adamw ")) return "adamw";
  if (label.startsWith("zero grad ")) return `zero grad (${command.kind})`;
  if (label.startsWith("add backward ")) return `add backward (${command.kind})`;
  if (isMatmul(command)) return label.replace(/ \((texture|storage)\)$/, "");
  return label.replace(/\d+/g, "#");
}

/**
 * Net milliseconds per op group: each group's commands in their step order as one submit,
 * minus an empty submit's latency. The groups' sum can exceed the step (each submit also waits
 * for its own pipeline drain).
 */
async function breakdown(
  engine: Engine,
  commands: Command[],
  runs: number,
): Promise<Record<string, number>> {
  const groups = new Map<string, Command[]>();
  for (const command of commands) {
    const group = opGroup(command);
    groups.set(group, [...(groups.get(group) ?? []), command]);
  }
  const latency = await medianMs(engine, () => [], runs);
  const costs: [string, number][] = [["(empty submit)", latency]];
  for (const [group, list] of groups) {
    costs.push([`${group} ×${list.length}`, await medianMs(engine, () => list, runs) - latency]);
  }
  costs.sort((a, b) => b[1] - a[1]);
  return Object.fromEntries(costs.map(([group, ms]) => [group, round(ms)]));
}

/** Median wall time of `runs` submits of `commands()` (called before each submit), with sync. */
async function medianMs(
  engine: Engine,
  commands: () => readonly Command[],
  runs: number,
): Promise<number> {
  const times: number[] = [];
  for (let r = 0; r < runs; r++) {
    const list = commands();
    const t0 = performance.now();
    await engine.run(list, "train step bench");
    await engine.sync();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1];
}

/** `count` sequences of `length` token ids below `vocab`, from a mulberry32 stream. */
export function randomSequences(
  count: number,
  length: number,
  vocab: number,
  seed: number,
): number[][] {
  const rng = new Mulberry32(seed);
  const sequences: number[][] = [];
  for (let s = 0; s < count; s++) {
    const ids: number[] = [];
    for (let i = 0; i < length; i++) ids.push(Math.floor(rng.next() * vocab));
    sequences.push(ids);
  }
  return sequences;
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

if (import.meta.main) {
  const { values: flags } = parseArgs({
    args: Deno.args,
    options: { runs: { type: "string", default: "5" }, breakdown: { type: "boolean" } },
    strict: true,
  });
  const engine = await Engine.create({ verbose: true });
  const results = await trainStepCases(engine, {
    runs: Number(flags.runs),
    breakdown: flags.breakdown,
  });
  for (const result of results) console.log(JSON.stringify(result));
  if (results.some((r) => !r.ok)) Deno.exit(1);
}
