// The CoMiGS MLP (a gated mixture of E = 2 LoRA experts over one frozen GPT-2 MLP), forward and
// backward, at the shipped base model's shape (N 1024, C 128, H 512) and GPT-2 124M's (N 512,
// C 768, H 3072), r = 8, gates a dense 2-way softmax; gradients for x, the gate and every LoRA
// tensor. `cases` times it alone (gflops counts the four frozen [N, C]×[C, H]-sized products that
// dominate it); `moeMlpVsLoraMlp` times it against the single-LoRA MLP built from existing ops
// (matmul → loraLinear → gelu → matmul → loraLinear, gradients for x and the LoRA tensors),
// interleaved, and reports their ratio: the target is that two experts cost far less than
// two LoRA MLPs.
//
// Checks: the float64 reference at GPT-2's width costs ~10 s per full pass, so dy is nonzero on
// CHECK_ROWS spread rows only; then every gradient (parameter sums included) depends on those rows
// alone and the reference runs on them. Timing does not depend on dy's values.
import type { BenchCase, BenchSetup } from "../case.ts";
import { passes } from "../case.ts";
import type { Command, Engine } from "../../engine/device.ts";
import { Tape } from "../../engine/tape.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { gelu } from "../../kernels/gelu.ts";
import { loraLinear } from "../../kernels/lora.ts";
import { matmul } from "../../kernels/matmul.ts";
import { moeMlp } from "../../kernels/moe_mlp.ts";
import {
  moeMlpBackwardRef,
  type MoeMlpInputs,
  moeMlpRef,
  type MoeMlpShape,
} from "../../tests/ref/moe_mlp.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";
import {
  mixtureTolerance as tolerance,
  pickRows,
  spreadRows,
} from "../../tests/kernels/mixture_inputs.ts";
import { interleaved, round3 } from "../interleave.ts";

const SCALE = 16 / Math.sqrt(8);
const RANK = 8;
const EXPERTS = 2;
const CHECK_ROWS = 8;
const SHAPES: [rows: number, embd: number, hidden: number][] = [[1024, 128, 512], [512, 768, 3072]];
const GRADS = ["x", "gate", "fcA", "fcB", "projA", "projB"] as const;

interface Problem {
  shape: MoeMlpShape;
  values: MoeMlpInputs;
  dy: Float64Array;
  /** The rows where dy is nonzero. */
  checked: number[];
}

function problem(rows: number, embd: number, hidden: number, experts: number): Problem {
  const rng = new Rng(7);
  const shape = { rows, embd, hidden, rank: RANK, experts };
  const u = (size: number, bound: number) => f32(rng.uniform(size, -bound, bound));
  const logits = rng.normal(rows * experts, 2);
  const gate = new Float64Array(rows * experts);
  for (let n = 0; n < rows; n++) {
    const row = logits.subarray(n * experts, (n + 1) * experts).map(Math.exp);
    const sum = row.reduce((a, b) => a + b, 0);
    row.forEach((v, j) => gate[n * experts + j] = experts === 1 ? 1 : v / sum);
  }
  const checked = spreadRows(rows, CHECK_ROWS);
  const dy = new Float64Array(rows * embd);
  for (const n of checked) dy.set(u(embd, 1), n * embd);
  return {
    shape,
    values: {
      x: u(rows * embd, 1),
      gate: f32(gate),
      fcWeight: u(embd * hidden, Math.sqrt(3 / embd)),
      fcBias: u(hidden, 0.5),
      projWeight: u(hidden * embd, 1 / Math.sqrt(hidden)),
      projBias: u(embd, 0.5),
      fcA: u(experts * RANK * embd, 1 / Math.sqrt(embd)),
      fcB: u(experts * hidden * RANK, 0.5),
      projA: u(experts * RANK * hidden, 1 / Math.sqrt(hidden)),
      projB: u(experts * embd * RANK, 0.5),
    },
    dy,
    checked,
  };
}

/** What a built step computed, to compare with the reference after one run from zero grads. */
interface Built {
  commands: Command[];
  y: Tensor;
  /** Gradients in GRADS order (null: not computed by this variant). */
  grads: (Tensor | null)[];
  tensors: Tensor[];
  tape: Tape;
}

/** moeMlp with every LoRA tensor, x and the gate as leaves. */
function buildMoe(engine: Engine, p: Problem): Built {
  const { rows: n, embd: c, hidden: h, rank: r, experts: e } = p.shape;
  const v = p.values;
  const make = (data: Float64Array, shape: number[], label: string, grad: boolean) => {
    const t = engine.tensor(shape, { data, label });
    t.requiresGrad = grad;
    return t;
  };
  const t = {
    x: make(v.x, [n, c], "x", true),
    gate: make(v.gate, [n, e], "gate", true),
    fcA: make(v.fcA, [e, r, c], "fcA", true),
    fcB: make(v.fcB, [e, h, r], "fcB", true),
    projA: make(v.projA, [e, r, h], "projA", true),
    projB: make(v.projB, [e, c, r], "projB", true),
    fcWeight: make(v.fcWeight, [c, h], "fcWeight", false),
    fcBias: make(v.fcBias, [h], "fcBias", false),
    projWeight: make(v.projWeight, [h, c], "projWeight", false),
    projBias: make(v.projBias, [c], "projBias", false),
  };
  const dy = make(p.dy, [n, c], "dy", false);
  const tape = new Tape(engine);
  const y = moeMlp(tape, t.x, t.gate, t, SCALE);
  const commands = [...tape.forward(), ...tape.backward(y, dy)];
  return {
    commands,
    y,
    grads: GRADS.map((name) => t[name].grad!),
    tensors: [...Object.values(t), dy],
    tape,
  };
}

/** The single-LoRA MLP from existing ops: expert 0 of the problem, gate 1. */
function buildLora(engine: Engine, p: Problem): Built {
  const { rows: n, embd: c, hidden: h, rank: r } = p.shape;
  const v = p.values;
  const make = (data: Float64Array, shape: number[], label: string, grad: boolean) => {
    const t = engine.tensor(shape, { data, label });
    t.requiresGrad = grad;
    return t;
  };
  const x = make(v.x, [n, c], "x", true);
  const fcA = make(v.fcA.subarray(0, r * c), [r, c], "fcA", true);
  const fcB = make(v.fcB.subarray(0, h * r), [h, r], "fcB", true);
  const projA = make(v.projA.subarray(0, r * h), [r, h], "projA", true);
  const projB = make(v.projB.subarray(0, c * r), [c, r], "projB", true);
  const fcWeight = make(v.fcWeight, [c, h], "fcWeight", false);
  const fcBias = make(v.fcBias, [h], "fcBias", false);
  const projWeight = make(v.projWeight, [h, c], "projWeight", false);
  const projBias = make(v.projBias, [c], "projBias", false);
  const dy = make(p.dy, [n, c], "dy", false);
  const tape = new Tape(engine);
  const fc = loraLinear(tape, x, matmul(tape, x, fcWeight, { bias: fcBias }), fcA, fcB, SCALE);
  const act = gelu(tape, fc);
  const y = loraLinear(
    tape,
    act,
    matmul(tape, act, projWeight, { bias: projBias }),
    projA,
    projB,
    SCALE,
  );
  const commands = [...tape.forward(), ...tape.backward(y, dy)];
  return {
    commands,
    y,
    grads: [x.grad!, null, fcA.grad!, fcB.grad!, projA.grad!, projB.grad!],
    tensors: [x, fcA, fcB, projA, projB, fcWeight, fcBias, projWeight, projBias, dy],
    tape,
  };
}

/**
 * Compares one run of `built` (gradients accumulated once into zero) with the reference on the
 * checked rows. The single-LoRA MLP is the mixture with one expert and gate 1.
 */
async function check(engine: Engine, p: Problem, built: Built, experts: number): Promise<void> {
  const { embd: c, hidden: h, rank: r } = p.shape;
  const v = p.values;
  const k = p.checked.length;
  const per = (a: Float64Array) => a.subarray(0, (a.length / p.shape.experts) * experts);
  const sub: MoeMlpInputs = {
    ...v,
    x: pickRows(v.x, c, p.checked),
    gate: experts === 1
      ? new Float64Array(k).fill(1)
      : pickRows(v.gate, p.shape.experts, p.checked),
    fcA: per(v.fcA),
    fcB: per(v.fcB),
    projA: per(v.projA),
    projB: per(v.projB),
  };
  const shape = { rows: k, embd: c, hidden: h, rank: r, experts };
  const dy = pickRows(p.dy, c, p.checked);
  const yRef = moeMlpRef(shape, sub, SCALE);
  const y = pickRows(Float64Array.from(await engine.readF32(built.y)), c, p.checked);
  assertClose(y, yRef, tolerance(yRef), "y");
  const ref = moeMlpBackwardRef(shape, sub, SCALE, dy);
  for (const [i, name] of GRADS.entries()) {
    const grad = built.grads[i];
    if (!grad) continue;
    let got: Float64Array = Float64Array.from(await engine.readF32(grad));
    if (name === "x" || name === "gate") got = pickRows(got, got.length / p.shape.rows, p.checked);
    assertClose(got, ref[name], tolerance(ref[name]), `d${name}`);
  }
}

function dispose(built: Built): void {
  built.tape.dispose();
  for (const t of built.tensors) t.dispose();
}

/** Frozen-product flops of one forward + backward: x·W_f, m·W_p, dy·W_pᵀ, dpre·W_fᵀ. */
const frozenFlops = (rows: number, embd: number, hidden: number) => 4 * 2 * rows * embd * hidden;

export const cases: BenchCase[] = SHAPES.map(([rows, embd, hidden]) => ({
  kernel: "moe_mlp",
  variant: `E${EXPERTS} fwd+bwd`,
  shape: { rows, cols: embd, hidden, rank: RANK, experts: EXPERTS },
  setup: (engine): Promise<BenchSetup> => {
    const p = problem(rows, embd, hidden, EXPERTS);
    const built = buildMoe(engine, p);
    return Promise.resolve({
      commands: built.commands,
      check: () => passes(() => check(engine, p, built, EXPERTS)),
      flops: frozenFlops(rows, embd, hidden),
      dispose: () => dispose(built),
    });
  },
}));

/**
 * The E = 2 mixture MLP against the single-LoRA MLP, interleaved (the machine drifts up to 2×
 * over minutes), one record per shape: ratio = median over rounds of moe ms / LoRA ms.
 */
export async function moeMlpVsLoraMlp(
  engine: Engine,
  opts: { runs: number },
): Promise<Record<string, unknown>[]> {
  const records: Record<string, unknown>[] = [];
  for (const [rows, embd, hidden] of SHAPES) {
    const p = problem(rows, embd, hidden, EXPERTS);
    const moe = buildMoe(engine, p);
    const lora = buildLora(engine, p);
    try {
      await engine.run(moe.commands, "moe check");
      await engine.run(lora.commands, "lora check");
      await engine.sync();
      const ok = await passes(() => check(engine, p, moe, EXPERTS)) &&
        await passes(() => check(engine, p, lora, 1));
      const { ms, ratios, reps } = await interleaved(
        engine,
        [moe.commands, lora.commands],
        opts.runs,
      );
      records.push({
        kernel: "moe_mlp_vs_lora_mlp",
        variant: `E${EXPERTS} fwd+bwd`,
        rows,
        cols: embd,
        hidden,
        rank: RANK,
        experts: EXPERTS,
        ratio: round3(ratios[1]),
        ms: round3(ms[0]),
        lora_ms: round3(ms[1]),
        runs: opts.runs,
        reps,
        ok,
        adapter: engine.adapterName,
      });
    } finally {
      dispose(moe);
      dispose(lora);
    }
  }
  return records;
}
