// The CoMiGS router gate, per token (row) over E experts, k clipped to E:
//   k ≥ 2: the k largest raw logits (ties to the lowest expert index), softmax over those k
//          only; the other gates are 0.
//   k = 1: softmax over all E logits; the largest probability is kept, not renormalised;
//          the others are 0. (With E = 1 the gate is 1.)
// Backward: the selection is piecewise constant, so no gradient flows through it.
//   k ≥ 2: dlogit_j = w_j·(g_j − Σ_i w_i·g_i), zero outside the selection (softmax over the k).
//   k = 1: the kept gate is p_m = softmax(all logits)_m, which depends on every logit, so
//          dlogit_j = g_m·p_m·(δ_jm − p_j) for all j. This is what PyTorch autograd gives for
//          the authors' formulation (epfml/CoMiGS models/gating.py: softmax over all E, then
//          topk of the probabilities), so a PyTorch-made debug state agrees.
// One invocation per row holds the row's E ≤ 16 logits in registers; backward recomputes the
// gates from the logits, so nothing is saved.
import type { Binding } from "../engine/bindings.ts";
import type { Engine } from "../engine/device.ts";
import type { Kernel } from "../engine/pipelines.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";

const WORKGROUP = 64;
/**
 * The most experts a layer may hold: the gate and load-balance kernels keep a row's logits in
 * registers. The one definition of the limit (the mixture MLP and the adapters use it too).
 */
export const MAX_EXPERTS = 16;

/** The gates topkGate made, with their k (clipped to E): at most k nonzero entries per row. */
const perRowOfGate = new WeakMap<Tensor, number>();

/**
 * k when `gate` is a gate topkGate made (each row then has at most k nonzero entries, the
 * selected experts': what the mixture's sparse dispatch routes by), else undefined.
 */
export function selectedPerRow(gate: Tensor): number | undefined {
  return perRowOfGate.get(gate);
}

/** Loads the row's logits and computes its gates w (and, for k = 1, all probabilities p). */
function gateWgsl(experts: number, k: number): string {
  const common = `
const E = ${experts}u;
fn load_logits(row: u32) -> array<f32, ${experts}> {
  var l: array<f32, ${experts}>;
  for (var j = 0u; j < E; j++) { l[j] = logits[row * E + j]; }
  return l;
}
fn row_max(l: array<f32, ${experts}>) -> f32 {
  var m = l[0];
  for (var j = 1u; j < E; j++) { m = max(m, l[j]); }
  return m;
}`;
  if (k === 1) {
    return `${common}
// p = softmax over all E; the first index holding the maximum is kept.
fn probabilities(l: array<f32, ${experts}>) -> array<f32, ${experts}> {
  let m = row_max(l);
  var p: array<f32, ${experts}>;
  var sum = 0.0;
  for (var j = 0u; j < E; j++) { p[j] = exp(l[j] - m); sum += p[j]; }
  for (var j = 0u; j < E; j++) { p[j] /= sum; }
  return p;
}
fn argmax(l: array<f32, ${experts}>) -> u32 {
  var best = 0u;
  for (var j = 1u; j < E; j++) { if (l[j] > l[best]) { best = j; } }
  return best;
}`;
  }
  return `${common}
const K = ${k}u;
// Expert j is selected when fewer than K experts rank before it (larger, or equal and lower).
fn gates(l: array<f32, ${experts}>) -> array<f32, ${experts}> {
  let m = row_max(l);
  var w: array<f32, ${experts}>;
  var sum = 0.0;
  for (var j = 0u; j < E; j++) {
    var rank = 0u;
    for (var i = 0u; i < E; i++) {
      rank += select(0u, 1u, l[i] > l[j] || (l[i] == l[j] && i < j));
    }
    w[j] = select(0.0, exp(l[j] - m), rank < K);
    sum += w[j];
  }
  for (var j = 0u; j < E; j++) { w[j] /= sum; }
  return w;
}`;
}

/**
 * A kernel of one invocation per row, forward or backward: the logits and `bindings` after
 * them, the gate functions, then `fn main` loading the row's logits l before `body`.
 */
function rowKernel(
  engine: Engine,
  label: string,
  rows: number,
  experts: number,
  k: number,
  index: string,
  bindings: readonly Binding[],
  body: string,
): Kernel {
  return declareKernel(
    engine,
    label,
    [["logits", "read", "array<f32>"], ...bindings],
    `
${gateWgsl(experts, k)}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let row = ${index};
  if (row >= ${rows}u) { return; }
  let l = load_logits(row);
  ${body}
}`,
  );
}

function forwardKernel(
  engine: Engine,
  rows: number,
  experts: number,
  k: number,
  index: string,
): Kernel {
  const body = k === 1
    ? `let p = probabilities(l);
  let best = argmax(l);
  for (var j = 0u; j < E; j++) { gate[row * E + j] = select(0.0, p[j], j == best); }`
    : `let w = gates(l);
  for (var j = 0u; j < E; j++) { gate[row * E + j] = w[j]; }`;
  return rowKernel(engine, "topk_gate", rows, experts, k, index, [
    ["gate", "rw", "array<f32>"],
  ], body);
}

function backwardKernel(
  engine: Engine,
  rows: number,
  experts: number,
  k: number,
  index: string,
  accumulate: boolean,
): Kernel {
  const write = (value: string) =>
    `dlogits[row * E + j] = ${accumulate ? "dlogits[row * E + j] + " : ""}${value};`;
  const body = k === 1
    ? `let p = probabilities(l);
  let best = argmax(l);
  let g_p = dgate[row * E + best] * p[best];
  for (var j = 0u; j < E; j++) { ${write("g_p * (select(0.0, 1.0, j == best) - p[j])")} }`
    : `let w = gates(l);
  var g: array<f32, ${experts}>;
  var wg = 0.0;
  for (var j = 0u; j < E; j++) { g[j] = dgate[row * E + j]; wg += w[j] * g[j]; }
  for (var j = 0u; j < E; j++) { ${write("w[j] * (g[j] - wg)")} }`;
  return rowKernel(engine, "topk_gate_backward", rows, experts, k, index, [
    ["dgate", "read", "array<f32>"],
    ["dlogits", "rw", "array<f32>"],
  ], body);
}

/** Gates [N, E] from router logits [N, E] with top-k (k clipped to E). */
export function topkGate(tape: Tape, routerLogits: Tensor, k: number): Tensor {
  const engine = tape.engine;
  const experts = routerLogits.shape[routerLogits.shape.length - 1];
  if (routerLogits.shape.length < 2 || routerLogits.dtype !== "f32" || experts > MAX_EXPERTS) {
    throw new ShapeError(
      `topkGate: router logits ${routerLogits} must be f32 [..., E] with E ≤ ${MAX_EXPERTS}`,
    );
  }
  if (!Number.isInteger(k) || k < 1) throw new ShapeError(`topkGate: k = ${k} must be ≥ 1`);
  const kept = Math.min(k, experts);
  const rows = routerLogits.size / experts;
  const gate = tape.tensor(routerLogits.shape, `topk_gate(${routerLogits.label})`);
  perRowOfGate.set(gate, kept);
  const grid = grid1d(rows, WORKGROUP);
  const forward = forwardKernel(engine, rows, experts, kept, grid.index);
  tape.record({
    name: "topk_gate",
    inputs: [routerLogits],
    outputs: [gate],
    forward: [engine.dispatch("topk_gate", forward, [routerLogits, gate], grid.workgroups)],
    backward: (ctx) => {
      const dlogits = ctx.gradInput(0);
      if (!dlogits) return [];
      const kernel = backwardKernel(engine, rows, experts, kept, grid.index, dlogits.accumulate);
      return [engine.dispatch(
        "topk_gate backward",
        kernel,
        [routerLogits, ctx.gradOutput(0), dlogits.tensor],
        grid.workgroups,
      )];
    },
  });
  return gate;
}
