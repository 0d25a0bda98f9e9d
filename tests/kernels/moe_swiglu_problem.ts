// The SwiGLU mixture of LoRA experts (kernels/moe_swiglu.ts) as a problem for its tests and its
// bench case: inputs at scales that exercise the whole SiLU, their upload, and the check of a
// run against the float64 reference. dy may be nonzero on a few chosen rows only: then every
// gradient (parameter sums included) depends on those rows alone, and a large shape is checked
// at the reference's cost for those rows.
import type { Engine } from "../../engine/device.ts";
import type { Tensor } from "../../engine/tensor.ts";
import type { MoeSwigluWeights } from "../../kernels/moe_swiglu.ts";
import type { MixtureShape } from "../ref/mixture.ts";
import { moeSwigluBackwardRef, type MoeSwigluInputs, moeSwigluRef } from "../ref/moe_swiglu.ts";
import { assertClose, f32, Rng } from "../util.ts";
import { type GateKind, gates, mixtureTolerance, pickRows } from "./mixture_inputs.ts";

/** The differentiable inputs, in moeSwiglu's gradient order. */
export const GRADS = ["x", "gate", "gateA", "gateB", "upA", "upB", "downA", "downB"] as const;
export type Grad = typeof GRADS[number];
export const FROZEN = ["gateWeight", "upWeight", "downWeight"] as const;

export interface Problem {
  shape: MixtureShape;
  values: MoeSwigluInputs;
  dy: Float64Array;
  /** The rows where dy is nonzero, on which the run is checked. */
  checked: number[];
}

/**
 * x, dy ~ U(±1); W_g, W_u ~ U(±spread·√(3/C)) (g and u ≈ N(0, spread²)); W_d ~ U(±1/√I); the
 * A's at their init scale U(±1/√in); the B's U(±0.5) (0 at init, but a zero B would hide half the
 * math). All rounded to f32; dy zero outside `checked` (every row by default).
 */
export function problem(
  shape: MixtureShape,
  seed: number,
  gateKind: GateKind,
  opts: { checked?: number[]; spread?: number } = {},
): Problem {
  const { rows: n, embd: c, hidden: i, rank: r, experts: e } = shape;
  const rng = new Rng(seed);
  const u = (size: number, bound: number) => f32(rng.uniform(size, -bound, bound));
  const frozen = (opts.spread ?? 1) * Math.sqrt(3 / c);
  const values = {
    x: u(n * c, 1),
    gate: gates(rng, n, e, gateKind),
    gateWeight: u(i * c, frozen),
    upWeight: u(i * c, frozen),
    downWeight: u(c * i, 1 / Math.sqrt(i)),
    gateA: u(e * r * c, 1 / Math.sqrt(c)),
    gateB: u(e * i * r, 0.5),
    upA: u(e * r * c, 1 / Math.sqrt(c)),
    upB: u(e * i * r, 0.5),
    downA: u(e * r * i, 1 / Math.sqrt(i)),
    downB: u(e * c * r, 0.5),
  };
  const checked = opts.checked ?? Array.from({ length: n }, (_, row) => row);
  const dy = new Float64Array(n * c);
  for (const row of checked) dy.set(u(c, 1), row * c);
  return { shape, values, dy, checked };
}

export type Tensors = Record<keyof MoeSwigluInputs, Tensor>;

/** Every input as a tensor (none requiring gradients), and dy. */
export function upload(engine: Engine, p: Problem): { t: Tensors; dy: Tensor } {
  const { rows: n, embd: c, hidden: i, rank: r, experts: e } = p.shape;
  const shapes: Record<keyof MoeSwigluInputs, number[]> = {
    x: [n, c],
    gate: [n, e],
    gateWeight: [i, c],
    upWeight: [i, c],
    downWeight: [c, i],
    gateA: [e, r, c],
    gateB: [e, i, r],
    upA: [e, r, c],
    upB: [e, i, r],
    downA: [e, r, i],
    downB: [e, c, r],
  };
  const names = Object.keys(shapes) as (keyof MoeSwigluInputs)[];
  const t = Object.fromEntries(
    names.map((name) => [name, engine.tensor(shapes[name], { data: p.values[name], label: name })]),
  ) as Tensors;
  return { t, dy: engine.tensor([n, c], { data: p.dy, label: "dy" }) };
}

export function weightsOf(t: Record<string, Tensor>): MoeSwigluWeights {
  const { gateWeight, upWeight, downWeight, gateA, gateB, upA, upB, downA, downB } = t;
  return { gateWeight, upWeight, downWeight, gateA, gateB, upA, upB, downA, downB };
}

/** y and every gradient of the reference, on the checked rows (x, gate, y) or in full. */
export function reference(p: Problem, scale: number) {
  const { shape, values, checked } = p;
  const sub: MoeSwigluInputs = {
    ...values,
    x: pickRows(values.x, shape.embd, checked),
    gate: pickRows(values.gate, shape.experts, checked),
  };
  const subShape = { ...shape, rows: checked.length };
  const dy = pickRows(p.dy, shape.embd, checked);
  return {
    y: moeSwigluRef(subShape, sub, scale),
    grads: moeSwigluBackwardRef(subShape, sub, scale, dy),
  };
}

/**
 * The problem of `count` plain LoRA'd SwiGLU MLPs whose outputs are summed: the mixture of its
 * first `count` experts with every gate 1.
 */
export function summedExperts(p: Problem, count: number): Problem {
  const first = (stacked: Float64Array) =>
    stacked.subarray(0, (stacked.length / p.shape.experts) * count);
  const v = p.values;
  return {
    ...p,
    shape: { ...p.shape, experts: count },
    values: {
      ...v,
      gate: new Float64Array(p.shape.rows * count).fill(1),
      gateA: first(v.gateA),
      gateB: first(v.gateB),
      upA: first(v.upA),
      upB: first(v.upB),
      downA: first(v.downA),
      downB: first(v.downB),
    },
  };
}

/**
 * Asserts that a run's y and gradients match the reference on the checked rows; a gradient whose
 * tensor held `before` values must hold before + the reference's. A gradient given as a list of
 * tensors is their concatenation (one per expert); those left out (or null) are not checked.
 */
export async function checkRun(
  engine: Engine,
  p: Problem,
  ref: ReturnType<typeof reference>,
  got: { y: Tensor; grads: Partial<Record<Grad, Tensor | readonly Tensor[] | null>> },
  what: string,
  before: Partial<Record<Grad, Float64Array>> = {},
): Promise<void> {
  const rowsOf = (name: string, values: Float64Array) => {
    const width = name === "x" || name === "y" ? p.shape.embd : p.shape.experts;
    return name === "x" || name === "y" || name === "gate"
      ? pickRows(values, width, p.checked)
      : values;
  };
  const read = async (name: string, t: Tensor | readonly Tensor[]) => {
    const parts = await Promise.all((Array.isArray(t) ? t : [t]).map((x) => engine.readF32(x)));
    const all = new Float64Array(parts.reduce((n, part) => n + part.length, 0));
    parts.reduce((at, part) => (all.set(part, at), at + part.length), 0);
    return rowsOf(name, all);
  };
  // Every read at once: each is a submit and a wait, which lavapipe makes slow one by one.
  const names = GRADS.filter((name) => got.grads[name]);
  const [y, ...grads] = await Promise.all([
    read("y", got.y),
    ...names.map((name) => read(name, got.grads[name]!)),
  ]);
  assertClose(y, ref.y, mixtureTolerance(ref.y), `${what} forward`);
  for (const [k, name] of names.entries()) {
    const prior = before[name] ? rowsOf(name, before[name]) : null;
    const expected = prior ? ref.grads[name].map((v, j) => v + prior[j]) : ref.grads[name];
    assertClose(grads[k], expected, mixtureTolerance(expected), `${what} d${name}`);
  }
}
