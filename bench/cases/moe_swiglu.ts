// The CoMiGS MLP on a Llama-family base (a gated mixture of E = 2 LoRA experts over one frozen
// SwiGLU MLP, kernels/moe_swiglu.ts), forward and backward, at SmolLM2-135M's MLP (C 576, I 1536)
// and batch 8 × 128 tokens, r = 8, gates a dense 2-way softmax (top-2); gradients for x, the gate
// and every LoRA tensor. `cases` times it alone (gflops counts the six frozen [N, C]×[C, I]-sized
// products that dominate it); `moeSwigluVsLoraMlp` times it against one plain LoRA'd SwiGLU MLP
// and against two (their outputs summed: the mixture unfused, gates aside), built from existing
// ops (matmul → loraLinear for gate and up → swiglu → matmul → loraLinear for down, gradients for
// x and the LoRA tensors), interleaved, and reports the ratios. The whole training step on a
// Llama config is bench/comigs_step.ts's comigs_vs_lora_step (config base-llama).
//
// Checks: dy is nonzero on CHECK_ROWS spread rows only, so every gradient depends on those rows
// alone and the float64 reference runs on them (tests/kernels/moe_swiglu_problem.ts). Timing
// does not depend on dy's values.
import type { BenchCase, BenchSetup } from "../case.ts";
import { passes } from "../case.ts";
import type { Command, Engine } from "../../engine/device.ts";
import { Tape } from "../../engine/tape.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { add } from "../../kernels/add.ts";
import { loraLinear } from "../../kernels/lora.ts";
import { matmul } from "../../kernels/matmul.ts";
import { moeSwiglu } from "../../kernels/moe_swiglu.ts";
import { swiglu } from "../../kernels/swiglu.ts";
import { spreadRows } from "../../tests/kernels/mixture_inputs.ts";
import {
  checkRun,
  type Grad,
  GRADS,
  type Problem,
  problem,
  reference,
  summedExperts,
  upload,
  weightsOf,
} from "../../tests/kernels/moe_swiglu_problem.ts";
import { interleaved, round3 } from "../interleave.ts";

const SCALE = 16 / Math.sqrt(8);
/** SmolLM2-135M's MLP at batch 8 × 128 tokens, two experts of rank 8. */
const SHAPE = { rows: 8 * 128, embd: 576, hidden: 1536, rank: 8, experts: 2 };
const CHECK_ROWS = 8;
/** SHAPE in the fields of interfaces.md's bench records. */
const FIELDS = {
  rows: SHAPE.rows,
  cols: SHAPE.embd,
  hidden: SHAPE.hidden,
  rank: SHAPE.rank,
  experts: SHAPE.experts,
};

/** What a built program computed, to compare with the reference after one run from zero grads. */
interface Built {
  commands: Command[];
  y: Tensor;
  grads: Partial<Record<Grad, Tensor | Tensor[]>>;
  dispose: () => void;
}

function smolProblem(): Problem {
  return problem(SHAPE, 7, "softmax", { checked: spreadRows(SHAPE.rows, CHECK_ROWS) });
}

/** moeSwiglu with x, the gate and every LoRA tensor as leaves. */
function buildMoe(engine: Engine, p: Problem): Built {
  const { t, dy } = upload(engine, p);
  for (const name of GRADS) t[name].requiresGrad = true;
  const tape = new Tape(engine);
  const y = moeSwiglu(tape, t.x, t.gate, weightsOf(t), SCALE);
  return {
    commands: [...tape.forward(), ...tape.backward(y, dy)],
    y,
    grads: Object.fromEntries(GRADS.map((name) => [name, t[name].grad!])),
    dispose: () => {
      tape.dispose();
      for (const tensor of [...Object.values(t), dy]) tensor.dispose();
    },
  };
}

/**
 * `count` LoRA'd SwiGLU MLPs from plain ops (experts 0.. of the problem), their outputs summed,
 * with x and every LoRA matrix as leaves.
 */
function buildLoraMlps(engine: Engine, p: Problem, count: number): Built {
  const { t, dy } = upload(engine, p);
  t.x.requiresGrad = true;
  const owned: Tensor[] = [];
  /** Expert j's matrix of a stacked LoRA tensor, as its own leaf. */
  const expert = (name: "gateA" | "gateB" | "upA" | "upB" | "downA" | "downB", j: number) => {
    const shape = t[name].shape.slice(1);
    const size = shape[0] * shape[1];
    const data = p.values[name].subarray(j * size, (j + 1) * size);
    const leaf = engine.tensor(shape, { data, label: `${name}[${j}]` });
    leaf.requiresGrad = true;
    owned.push(leaf);
    return leaf;
  };
  const tape = new Tape(engine);
  const lora = (input: Tensor, weight: Tensor, a: Tensor, b: Tensor) =>
    loraLinear(tape, input, matmul(tape, input, weight, { transB: true }), a, b, SCALE);
  const leaves: Record<string, Tensor[]> = {};
  let y: Tensor | null = null;
  for (let j = 0; j < count; j++) {
    const m = Object.fromEntries(
      (["gateA", "gateB", "upA", "upB", "downA", "downB"] as const).map((name) => {
        const leaf = expert(name, j);
        (leaves[name] ??= []).push(leaf);
        return [name, leaf];
      }),
    );
    const h = swiglu(
      tape,
      lora(t.x, t.gateWeight, m.gateA, m.gateB),
      lora(t.x, t.upWeight, m.upA, m.upB),
    );
    const yj = lora(h, t.downWeight, m.downA, m.downB);
    y = y ? add(tape, y, yj) : yj;
  }
  const out = y!;
  const commands = [...tape.forward(), ...tape.backward(out, dy)];
  return {
    commands,
    y: out,
    grads: {
      x: t.x.grad!,
      ...Object.fromEntries(
        Object.entries(leaves).map(([name, list]) => [name, list.map((leaf) => leaf.grad!)]),
      ),
    },
    dispose: () => {
      tape.dispose();
      for (const tensor of [...Object.values(t), ...owned, dy]) tensor.dispose();
    },
  };
}

/** One run of `built` from zero gradients against the reference of `p`, on its checked rows. */
function check(engine: Engine, p: Problem, built: Built): Promise<boolean> {
  return passes(() => checkRun(engine, p, reference(p, SCALE), built, "moe_swiglu bench"));
}

/** Frozen-product flops of one forward + backward: x·W_gᵀ, x·W_uᵀ, m·W_dᵀ, dy·W_d, dx's two. */
const frozenFlops = ({ rows, embd, hidden }: typeof SHAPE) => 6 * 2 * rows * embd * hidden;

export const cases: BenchCase[] = [{
  kernel: "moe_swiglu",
  variant: `E${SHAPE.experts} fwd+bwd`,
  shape: FIELDS,
  setup: (engine): Promise<BenchSetup> => {
    const p = smolProblem();
    const built = buildMoe(engine, p);
    return Promise.resolve({
      commands: built.commands,
      check: () => check(engine, p, built),
      flops: frozenFlops(SHAPE),
      dispose: built.dispose,
    });
  },
}];

/**
 * The E = 2 mixture against one and against two plain LoRA'd SwiGLU MLPs, interleaved (the machine
 * drifts), each checked first: ratio = median over rounds of mixture ms / one LoRA MLP's ms,
 * ratio_two the same against two.
 */
export async function moeSwigluVsLoraMlp(
  engine: Engine,
  opts: { runs: number },
): Promise<Record<string, unknown>[]> {
  const p = smolProblem();
  const programs: [Built, Problem][] = [
    [buildMoe(engine, p), p],
    [buildLoraMlps(engine, p, 1), summedExperts(p, 1)],
    [buildLoraMlps(engine, p, 2), summedExperts(p, 2)],
  ];
  try {
    let ok = true;
    for (const [built, problemOf] of programs) {
      await engine.run(built.commands, "moe_swiglu check");
      ok &&= await check(engine, problemOf, built);
    }
    const { ms, ratios, reps } = await interleaved(
      engine,
      programs.map(([built]) => built.commands),
      opts.runs,
    );
    return [{
      kernel: "moe_swiglu_vs_lora_mlp",
      variant: `E${SHAPE.experts} fwd+bwd`,
      ...FIELDS,
      ratio: round3(ratios[1]),
      ratio_two: round3(ratios[2]),
      ms: round3(ms[0]),
      lora_ms: round3(ms[1]),
      two_lora_ms: round3(ms[2]),
      runs: opts.runs,
      reps,
      ok,
      adapter: engine.adapterName,
    }];
  } finally {
    for (const [built] of programs) built.dispose();
  }
}
