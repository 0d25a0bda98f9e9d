// What a client with more specialists pays (issue 17). `comigs_sparse_vs_dense`: one CoMiGS
// expert step (attention LoRA, routers, the mixture MLP, load balancing, AdamW; top-2) with
// E = 8 experts per block against one with E = 2, at 8 × 128 tokens, on the shipped GPT-2 base
// model (models/base) and on a Llama of the same size with random weights (hidden 128,
// intermediate 344, 4 layers, 4 heads, 2 KV heads, vocab 4096). E = 8 runs with the sparse
// dispatch (the default) and, for reference, dense; E = 2 with k = 2 is dense either way.
// ratio = step time of E = 8 over E = 2 (target ≤ 1.5). Interleaved rounds (bench/interleave.ts).
// Before timing, the sparse E = 8 step must reproduce the dense one: the same losses over a few
// steps, the same gradients.
// `mixture_dispatch_crossover`: the mixture op alone (forward and backward, every gradient) at
// the base models' MLPs, sparse against dense over N, E and k (sparse's y and every gradient
// checked against dense's first), where kernels/mixture.ts's SPARSE_MIN_ROWS comes from.
//
//   deno run -A bench/comigs_sparse.ts [--runs N] [--crossover]
import { parseArgs } from "node:util";
import { type Command, Engine } from "../engine/device.ts";
import { Tape, zeroGrad } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { chooseMixtureDispatch, type MixtureDispatch } from "../kernels/mixture.ts";
import { moeMlp } from "../kernels/moe_mlp.ts";
import { moeSwiglu } from "../kernels/moe_swiglu.ts";
import { topkGate } from "../kernels/topk_gate.ts";
import { type AdapterConfig, AdapterTensors, initAdapters } from "../model/adapters.ts";
import { dimsOf } from "../model/base.ts";
import type { BaseModel } from "../model/base_model.ts";
import { TokenBatch } from "../model/batch.ts";
import { forwardAdapted } from "../model/comigs.ts";
import { GPT2 } from "../model/gpt2.ts";
import { loadGpt2Checkpoint } from "../model/gpt2_checkpoint.ts";
import { initBaseWeights } from "../model/init.ts";
import { Llama } from "../model/llama.ts";
import { AdamW } from "../model/optim.ts";
import { Mulberry32 } from "../model/rng.ts";
import { BASE_LLAMA } from "./comigs_step.ts";
import { interleaved, round3 } from "./interleave.ts";

const MODEL = new URL("../models/base", import.meta.url).pathname;
const B = 8, T = 128, TOP_K = 2;
/** Sparse against dense: the same f32 sums in another order, through a 4-block model. */
const SAME = 1e-4;

interface Step {
  commands: () => Command[];
  loss: Tensor;
  params: Tensor[];
  dispose: () => void;
}

/** One expert step with `experts` per block, its mixtures recorded with `dispatch`. */
function buildStep(
  engine: Engine,
  model: BaseModel,
  batch: TokenBatch,
  experts: number,
  dispatch: MixtureDispatch,
): Step {
  const config: AdapterConfig = {
    rank: 8,
    alpha: 16,
    scaling: "rslora",
    topK: TOP_K,
    experts: new Array(dimsOf(model.config).layers).fill(experts),
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
  chooseMixtureDispatch(engine, dispatch);
  let recorded: { objective: Tensor; loss: Tensor };
  try {
    recorded = forwardAdapted(tape, model, adapters, batch);
  } finally {
    chooseMixtureDispatch(engine, "auto");
  }
  const body = [...zeroGrad(params), ...tape.forward(), ...tape.backward(recorded.objective)];
  const opt = new AdamW(engine, params, { lr: 2e-3, betas: [0.9, 0.95], weightDecay: 0.01 });
  return {
    commands: () => [...body, ...opt.step()],
    loss: recorded.loss,
    params,
    dispose: () => {
      opt.dispose();
      tape.dispose();
      adapters.dispose();
    },
  };
}

/** Whether `a` equals `b` within SAME of b's largest magnitude. */
function close(a: Float32Array, b: Float32Array): boolean {
  const scale = b.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  return a.length === b.length && a.every((v, i) => Math.abs(v - b[i]) <= SAME * scale);
}

/**
 * Whether `sparse` trains as `dense` (both fresh from the same initialisation): every gradient
 * of the first step, then the loss of each of three steps, within SAME of the largest value.
 */
async function sameTraining(engine: Engine, sparse: Step, dense: Step): Promise<boolean> {
  for (let s = 0; s < 3; s++) {
    for (const step of [sparse, dense]) await engine.run(step.commands(), "check");
    const [a, b] = await Promise.all([sparse, dense].map((step) => engine.readF32(step.loss)));
    if (!close(a, b)) return false;
    if (s > 0) continue;
    for (const [i, p] of sparse.params.entries()) {
      const [ga, gb] = await Promise.all([p, dense.params[i]].map((t) => engine.readF32(t.grad!)));
      if (!close(ga, gb)) return false;
    }
  }
  return true;
}

async function baseModels(engine: Engine): Promise<{ config: string; model: BaseModel }[]> {
  const { config, weights } = await loadGpt2Checkpoint(MODEL);
  return [
    { config: "base (GPT-2)", model: new GPT2(engine, config, weights) },
    {
      config: "llama-base (random)",
      model: new Llama(engine, BASE_LLAMA, initBaseWeights(BASE_LLAMA, 1)),
    },
  ];
}

export async function comigsSparseVsDense(
  engine: Engine,
  opts: { runs: number },
): Promise<Record<string, unknown>[]> {
  const results: Record<string, unknown>[] = [];
  for (const { config, model } of await baseModels(engine)) {
    const batch = new TokenBatch(engine, model.config, B, T);
    const rng = new Mulberry32(7);
    const vocab = batch.vocab;
    batch.set(
      Array.from(
        { length: B },
        () => Array.from({ length: T + 1 }, () => Math.floor(rng.next() * vocab)),
      ),
    );
    const two = buildStep(engine, model, batch, 2, "auto");
    const sparse = buildStep(engine, model, batch, 8, "auto");
    const dense = buildStep(engine, model, batch, 8, "dense");
    try {
      const ok = await sameTraining(engine, sparse, dense);
      const load = Deno.loadavg()[0];
      const { ms, min, ratios, reps } = await interleaved(
        engine,
        [two.commands(), sparse.commands(), dense.commands()],
        opts.runs,
      );
      const common = { config, B, T, k: TOP_K, runs: opts.runs, reps, load1: load };
      // ratios[i] is the median of E2/E8 per round; its inverse, E8/E2 (an odd count of rounds).
      for (const [i, dispatch] of [[1, "sparse"], [2, "dense"]] as const) {
        results.push({
          kernel: "comigs_sparse_vs_dense",
          variant: dispatch,
          ...common,
          ratio: round3(1 / ratios[i]),
          ms: round3(ms[i]),
          ms_min: round3(min[i]),
          e2_ms: round3(ms[0]),
          e2_ms_min: round3(min[0]),
          tokens_per_s: Math.round(B * T / (ms[i] / 1000)),
          ok,
          adapter: engine.adapterName,
        });
      }
    } finally {
      for (const step of [two, sparse, dense]) step.dispose();
      batch.dispose();
      model.dispose();
    }
  }
  return results;
}

/**
 * The mixture op of one base model's MLP with every input a leaf, recorded as `dispatch` asks:
 * its commands (forward, then backward from a fixed dy), and its results (y, then each leaf's
 * gradient in creation order; the same inputs whatever the dispatch, drawn from one seed).
 */
function mixtureStep(
  engine: Engine,
  family: "gelu" | "swiglu",
  rows: number,
  experts: number,
  k: number,
  dispatch: "dense" | "sparse",
): { commands: Command[]; results: () => Tensor[]; dispose: () => void } {
  const embd = 128, hidden = family === "gelu" ? 512 : 344, rank = 8;
  const rng = new Mulberry32(rows + experts + k);
  const owned: Tensor[] = [];
  const tensor = (shape: number[], bound: number, trained: boolean) => {
    const size = shape.reduce((a, b) => a * b, 1);
    const data = Float32Array.from({ length: size }, () => bound * (2 * rng.next() - 1));
    const t = engine.tensor(shape, { data, label: "input" });
    t.requiresGrad = trained;
    owned.push(t);
    return t;
  };
  const x = tensor([rows, embd], 1, true), logits = tensor([rows, experts], 2, true);
  const dy = tensor([rows, embd], 1, false);
  const tape = new Tape(engine);
  const gate = topkGate(tape, logits, k);
  const lora = (inner: number, outer: number) => ({
    a: tensor([experts, rank, inner], 1 / Math.sqrt(inner), true),
    b: tensor([experts, outer, rank], 0.5, true),
  });
  const y = family === "gelu"
    ? (() => {
      const [fc, proj] = [lora(embd, hidden), lora(hidden, embd)];
      return moeMlp(
        tape,
        x,
        gate,
        {
          fcWeight: tensor([embd, hidden], 0.1, false),
          fcBias: tensor([hidden], 0.1, false),
          projWeight: tensor([hidden, embd], 0.05, false),
          projBias: tensor([embd], 0.1, false),
          fcA: fc.a,
          fcB: fc.b,
          projA: proj.a,
          projB: proj.b,
        },
        2,
        { dispatch },
      );
    })()
    : (() => {
      const [g, u, d] = [lora(embd, hidden), lora(embd, hidden), lora(hidden, embd)];
      return moeSwiglu(
        tape,
        x,
        gate,
        {
          gateWeight: tensor([hidden, embd], 0.1, false),
          upWeight: tensor([hidden, embd], 0.1, false),
          downWeight: tensor([embd, hidden], 0.05, false),
          gateA: g.a,
          gateB: g.b,
          upA: u.a,
          upB: u.b,
          downA: d.a,
          downB: d.b,
        },
        2,
        { dispatch },
      );
    })();
  const commands = [...tape.forward(), ...tape.backward(y, dy)];
  return {
    commands,
    results: () => [y, ...owned.filter((t) => t.requiresGrad).map((t) => t.grad!)],
    dispose: () => {
      tape.dispose();
      for (const t of owned) t.dispose();
    },
  };
}

/** Sparse over dense time of the mixture op alone, per (family, N, E, k). */
export async function mixtureDispatchCrossover(
  engine: Engine,
  opts: { runs: number },
): Promise<Record<string, unknown>[]> {
  const results: Record<string, unknown>[] = [];
  for (const family of ["gelu", "swiglu"] as const) {
    for (const [experts, k] of [[2, 2], [3, 2], [4, 2], [8, 2], [4, 1], [8, 1]]) {
      for (const rows of [8, 32, 128, 1024]) {
        const sparse = mixtureStep(engine, family, rows, experts, k, "sparse");
        const dense = mixtureStep(engine, family, rows, experts, k, "dense");
        try {
          // Run once each (the leaves' gradients accumulate: read before timing), sparse
          // checked against dense, which tests/kernels/moe_*_test.ts hold to float64 references.
          await engine.run([...sparse.commands, ...dense.commands], "check");
          const [a, b] = [sparse, dense].map((step) => step.results());
          const read = (ts: Tensor[]) => Promise.all(ts.map((t) => engine.readF32(t)));
          const [ra, rb] = await Promise.all([read(a), read(b)]);
          const ok = ra.every((v, i) => close(v, rb[i]));
          const { ms, min, ratios } = await interleaved(
            engine,
            [sparse.commands, dense.commands],
            opts.runs,
          );
          results.push({
            kernel: "mixture_dispatch_crossover",
            variant: family,
            N: rows,
            E: experts,
            k,
            sparse_ms: round3(ms[0]),
            dense_ms: round3(ms[1]),
            sparse_ms_min: round3(min[0]),
            dense_ms_min: round3(min[1]),
            // ratios[1] = median of sparse/dense per round: < 1 where sparse is faster.
            ratio: round3(ratios[1]),
            load1: Deno.loadavg()[0],
            ok,
            adapter: engine.adapterName,
          });
        } finally {
          sparse.dispose();
          dense.dispose();
        }
      }
    }
  }
  return results;
}

if (import.meta.main) {
  const { values: flags } = parseArgs({
    args: Deno.args,
    options: { runs: { type: "string", default: "5" }, crossover: { type: "boolean" } },
    strict: true,
  });
  const engine = await Engine.create({ verbose: true });
  const runs = Number(flags.runs);
  const results = flags.crossover
    ? await mixtureDispatchCrossover(engine, { runs })
    : await comigsSparseVsDense(engine, { runs });
  for (const result of results) console.log(JSON.stringify(result));
  if (results.some((r) => !r.ok)) Deno.exit(1);
}
