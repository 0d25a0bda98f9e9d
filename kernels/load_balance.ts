// The load-balancing loss of one MoE layer (method.md §1, Switch-Transformer style), from its
// router logits [N, E] with top-k routing (k clipped to E) and generalist importance ρ:
//   density_e = (number of (token, slot) pairs routed to e) / (N·k)      (no gradient)
//   prob_e    = (1/N)·Σ_n softmax(l_n)_e                                  (all E logits)
//   LB        = E²·mean_e(prob_e·density_e·f_e) = Σ_e prob_e·C_e,   C_e = E·density_e·f_e
// with E·f_0 = 1/ρ and E·f_e = (E−1)/(1−ρ) for the specialists. Routing is topkGate's: the k
// largest logits, ties to the lowest expert index (k = 1: the first maximum).
// Backward, through prob only: dLB/dl[n, j] = (1/N)·p_j·(C_j − Σ_e C_e·p_e), p = softmax(l_n).
//
// Both use Σ_e p_e = 1 to subtract C_0 first: LB = C_0 + Σ_e prob_e·(C_e − C_0) and
// dl[n, j] = p_j·(w_j − Σ_e w_e·p_e) with w_e = (C_e − C_0)/N. Mathematically the same, but f32
// probabilities miss summing to 1 by rounding, and this form keeps the constant case exact:
// E = 2, k = 2, ρ = ½ gives LB = 1 and a gradient of exactly 0.
//
// Forward, deterministic and without atomics: each invocation of a first pass reads a fixed run
// of rows and writes its partial counts (u32, exact) and probability sums; passes over the
// partials (each invocation adding a fixed run of them, in order) shrink them until a single
// invocation finishes: it adds the last partials, writes LB and saves w for backward.
// Backward is one invocation per row; it recomputes the row's softmax, so only w is saved.
//
// Lavapipe stops loops after 65,535 iterations per invocation: a first-pass row costs about
// E² + 4E iterations (the rank test, loads, max, exp, sums), 320 at E = 16, so 64 rows stay near
// 20k; a partial row costs E, so 256 of them stay near 4k.
import type { Binding } from "../engine/bindings.ts";
import type { Command, Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";
import { floatLiteral } from "./literals.ts";
import { MAX_EXPERTS } from "./topk_gate.ts";

const WORKGROUP = 64;
/** Rows one invocation of the first pass reads. */
const ROWS_PER_INVOCATION = 64;
/** Partial rows one invocation of a later pass adds. */
const PARTIALS_PER_INVOCATION = 256;

/** Elements of w: E rounded up to whole vec4s, zero-padded, so backward loads vec4s. */
function paddedExperts(experts: number): number {
  return Math.ceil(experts / 4) * 4;
}

/** The logits' binding: whole vec4s when E allows (loads cost per instruction here). */
function logitsBinding(experts: number): Binding {
  return ["logits", "read", `array<${experts % 4 === 0 ? "vec4f" : "f32"}>`];
}

/** Loading a row of logits, as `logitsBinding` declares them, and its softmax. */
function rowWgsl(experts: number): string {
  const vec = experts % 4 === 0;
  const load = vec
    ? `for (var q = 0u; q < ${experts / 4}u; q++) {
    let v = logits[row * ${experts / 4}u + q];
    l[4u * q] = v.x; l[4u * q + 1u] = v.y; l[4u * q + 2u] = v.z; l[4u * q + 3u] = v.w;
  }`
    : `for (var j = 0u; j < E; j++) { l[j] = logits[row * E + j]; }`;
  return `
const E = ${experts}u;
fn load_logits(row: u32) -> array<f32, ${experts}> {
  var l: array<f32, ${experts}>;
  ${load}
  return l;
}
fn softmax(l: array<f32, ${experts}>) -> array<f32, ${experts}> {
  var m = l[0];
  for (var j = 1u; j < E; j++) { m = max(m, l[j]); }
  var p: array<f32, ${experts}>;
  var total = 0.0;
  for (var j = 0u; j < E; j++) { p[j] = exp(l[j] - m); total += p[j]; }
  for (var j = 0u; j < E; j++) { p[j] /= total; }
  return p;
}`;
}

/** Whether expert j is among the row's top k: fewer than k experts rank before it. */
function routedWgsl(experts: number, kept: number): string {
  if (kept === experts) {
    return `fn routed(l: array<f32, ${experts}>, j: u32) -> bool { return true; }`;
  }
  return `
// Experts rank before j when larger, or equal and of lower index (topkGate's tie rule).
fn routed(l: array<f32, ${experts}>, j: u32) -> bool {
  var rank = 0u;
  for (var i = 0u; i < E; i++) {
    rank += select(0u, 1u, l[i] > l[j] || (l[i] == l[j] && i < j));
  }
  return rank < ${kept}u;
}`;
}

/** First pass: partial p holds the counts and probability sums of rows p·RUN .. (p+1)·RUN − 1. */
function partialsWgsl(rows: number, experts: number, kept: number, index: string): string {
  const partials = Math.ceil(rows / ROWS_PER_INVOCATION);
  return `${rowWgsl(experts)}
${routedWgsl(experts, kept)}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let p = ${index};
  if (p >= ${partials}u) { return; }
  var count: array<u32, ${experts}>;
  var prob_sum: array<f32, ${experts}>;
  let end = min(${rows}u, (p + 1u) * ${ROWS_PER_INVOCATION}u);
  for (var row = p * ${ROWS_PER_INVOCATION}u; row < end; row++) {
    let l = load_logits(row);
    let probs = softmax(l);
    for (var j = 0u; j < E; j++) {
      prob_sum[j] += probs[j];
      count[j] += select(0u, 1u, routed(l, j));
    }
  }
  for (var j = 0u; j < E; j++) {
    counts[p * E + j] = count[j];
    prob_sums[p * E + j] = prob_sum[j];
  }
}`;
}

/** The partials a shrinking or the final pass reads. */
const PARTIALS_IN: Binding[] = [
  ["counts_in", "read", "array<u32>"],
  ["prob_sums_in", "read", "array<f32>"],
];

/** Adds partial rows [first, end) in order; shared by the shrinking and the final pass. */
function sumPartialsWgsl(experts: number): string {
  return `
const E = ${experts}u;
struct Totals { count: array<u32, ${experts}>, prob_sum: array<f32, ${experts}> }
fn sum_partials(first: u32, end: u32) -> Totals {
  var t: Totals;
  for (var r = first; r < end; r++) {
    for (var j = 0u; j < E; j++) {
      t.count[j] += counts_in[r * E + j];
      t.prob_sum[j] += prob_sums_in[r * E + j];
    }
  }
  return t;
}`;
}

/** A pass shrinking `partials` rows of partials to ceil(partials / RUN). */
function shrinkWgsl(partials: number, experts: number, index: string): string {
  const out = Math.ceil(partials / PARTIALS_PER_INVOCATION);
  return `${sumPartialsWgsl(experts)}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let q = ${index};
  if (q >= ${out}u) { return; }
  let first = q * ${PARTIALS_PER_INVOCATION}u;
  let t = sum_partials(first, min(${partials}u, first + ${PARTIALS_PER_INVOCATION}u));
  for (var j = 0u; j < E; j++) {
    counts_out[q * E + j] = t.count[j];
    prob_sums_out[q * E + j] = t.prob_sum[j];
  }
}`;
}

/** The last pass (one invocation): LB from the totals, and w_e = (C_e − C_0)/N for backward. */
function finishWgsl(
  partials: number,
  rows: number,
  experts: number,
  kept: number,
  factors: number[],
): string {
  return `${sumPartialsWgsl(experts)}
// E·f_e: 1/ρ for the generalist, (E−1)/(1−ρ) for the specialists.
const FACTORS = array<f32, ${experts}>(${factors.map(floatLiteral).join(", ")});
const ROWS: f32 = ${floatLiteral(rows)};
const ROUTED_PAIRS: f32 = ${floatLiteral(rows * kept)};
@compute @workgroup_size(1)
fn main() {
  let t = sum_partials(0u, ${partials}u);
  var c: array<f32, ${experts}>;
  for (var j = 0u; j < E; j++) { c[j] = f32(t.count[j]) / ROUTED_PAIRS * FACTORS[j]; }
  var total = c[0];
  for (var j = 1u; j < E; j++) { total += t.prob_sum[j] / ROWS * (c[j] - c[0]); }
  lb[0] = total;
  for (var j = 0u; j < E; j++) { weights[j] = (c[j] - c[0]) / ROWS; }
}`;
}

/** dl[n, j] (+)= g·p_j·(w_j − Σ_e w_e·p_e), one invocation per row. */
function backwardWgsl(
  rows: number,
  experts: number,
  index: string,
  unitUpstream: boolean,
  accumulate: boolean,
): string {
  const vec = experts % 4 === 0;
  const quads = paddedExperts(experts) / 4;
  const add = (target: string) => accumulate ? `${target} + ` : "";
  const store = vec
    ? `for (var q = 0u; q < ${experts / 4}u; q++) {
    let i = row * ${experts / 4}u + q;
    dlogits[i] = ${
      add("dlogits[i]")
    }vec4f(d[4u * q], d[4u * q + 1u], d[4u * q + 2u], d[4u * q + 3u]);
  }`
    : `for (var j = 0u; j < E; j++) { dlogits[row * E + j] = ${add("dlogits[row * E + j]")}d[j]; }`;
  return `${rowWgsl(experts)}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let row = ${index};
  if (row >= ${rows}u) { return; }
  let p = softmax(load_logits(row));
  var w: array<f32, ${paddedExperts(experts)}>;
  for (var q = 0u; q < ${quads}u; q++) {
    let v = weights[q];
    w[4u * q] = v.x; w[4u * q + 1u] = v.y; w[4u * q + 2u] = v.z; w[4u * q + 3u] = v.w;
  }
  var mean = 0.0;
  for (var j = 0u; j < E; j++) { mean += w[j] * p[j]; }
  let g = ${unitUpstream ? "1.0" : "dlb[0]"};
  var d: array<f32, ${experts}>;
  for (var j = 0u; j < E; j++) { d[j] = g * p[j] * (w[j] - mean); }
  ${store}
}`;
}

/** The forward commands: partials, shrinking passes while too many remain, the final pass. */
function forwardCommands(
  tape: Tape,
  logits: Tensor,
  rows: number,
  experts: number,
  kept: number,
  factors: number[],
  lb: Tensor,
  weights: Tensor,
): Command[] {
  const engine: Engine = tape.engine;
  let partials = Math.ceil(rows / ROWS_PER_INVOCATION);
  const partialTensors = (n: number) =>
    [
      tape.tensor([n, experts], `load_balance counts(${logits.label})`, "u32"),
      tape.tensor([n, experts], `load_balance prob sums(${logits.label})`),
    ] as const;
  let [counts, probSums] = partialTensors(partials);
  const grid = grid1d(partials, WORKGROUP);
  const first = declareKernel(engine, "load_balance_partials", [
    logitsBinding(experts),
    ["counts", "rw", "array<u32>"],
    ["prob_sums", "rw", "array<f32>"],
  ], partialsWgsl(rows, experts, kept, grid.index));
  const commands: Command[] = [
    engine.dispatch("load_balance partials", first, [logits, counts, probSums], grid.workgroups),
  ];
  while (partials > PARTIALS_PER_INVOCATION) {
    const shrunk = Math.ceil(partials / PARTIALS_PER_INVOCATION);
    const [nextCounts, nextProbSums] = partialTensors(shrunk);
    const shrinkGrid = grid1d(shrunk, WORKGROUP);
    const kernel = declareKernel(engine, "load_balance_shrink", [
      ...PARTIALS_IN,
      ["counts_out", "rw", "array<u32>"],
      ["prob_sums_out", "rw", "array<f32>"],
    ], shrinkWgsl(partials, experts, shrinkGrid.index));
    commands.push(engine.dispatch(
      "load_balance shrink",
      kernel,
      [counts, probSums, nextCounts, nextProbSums],
      shrinkGrid.workgroups,
    ));
    [counts, probSums, partials] = [nextCounts, nextProbSums, shrunk];
  }
  const finish = declareKernel(engine, "load_balance_finish", [
    ...PARTIALS_IN,
    ["lb", "rw", "array<f32>"],
    ["weights", "rw", "array<f32>"],
  ], finishWgsl(partials, rows, experts, kept, factors));
  commands.push(engine.dispatch("load_balance finish", finish, [counts, probSums, lb, weights], 1));
  return commands;
}

/**
 * LB [1] of one MoE layer from its router logits [N, E] (E ≥ 2), top-k k (clipped to E),
 * generalist importance rho in (0, 1).
 */
export function loadBalance(tape: Tape, routerLogits: Tensor, k: number, rho: number): Tensor {
  const engine = tape.engine;
  const experts = routerLogits.shape[routerLogits.shape.length - 1];
  if (
    routerLogits.shape.length < 2 || routerLogits.dtype !== "f32" || experts > MAX_EXPERTS
  ) {
    throw new ShapeError(
      `loadBalance: router logits ${routerLogits} must be f32 [N, E] with E ≤ ${MAX_EXPERTS}`,
    );
  }
  if (experts < 2) {
    throw new ShapeError(
      `loadBalance: router logits ${routerLogits} have E = ${experts}; a layer with one expert ` +
        `has no router and no load-balancing loss (do not call loadBalance for it)`,
    );
  }
  if (!Number.isInteger(k) || k < 1) throw new ShapeError(`loadBalance: k = ${k} must be ≥ 1`);
  // E·f_e must be a finite f32: ρ at the ends of (0, 1) would divide by ~0.
  const factors = Array.from(
    { length: experts },
    (_, e) => e === 0 ? 1 / rho : (experts - 1) / (1 - rho),
  );
  if (!(rho > 0 && rho < 1) || !factors.every((f) => Number.isFinite(Math.fround(f)))) {
    throw new RangeError(
      `loadBalance: rho = ${rho} must lie strictly between 0 and 1 ` +
        `(with 1/ρ and (E−1)/(1−ρ) finite in f32)`,
    );
  }
  const kept = Math.min(k, experts);
  const rows = routerLogits.size / experts;
  const lb = tape.tensor([1], `load_balance(${routerLogits.label})`);
  const weights = tape.tensor(
    [paddedExperts(experts)],
    `load_balance weights(${routerLogits.label})`,
  );
  tape.record({
    name: "load_balance",
    inputs: [routerLogits],
    outputs: [lb],
    forward: forwardCommands(tape, routerLogits, rows, experts, kept, factors, lb, weights),
    backward: (ctx) => {
      const dlogits = ctx.gradInput(0);
      if (!dlogits) return [];
      const unit = ctx.gradOutputIsUnit(0);
      const grid = grid1d(rows, WORKGROUP);
      const kernel = declareKernel(engine, "load_balance_backward", [
        logitsBinding(experts),
        ["weights", "read", "array<vec4f>"],
        ["dlogits", "rw", `array<${experts % 4 === 0 ? "vec4f" : "f32"}>`],
        ...(unit ? [] : [["dlb", "read", "array<f32>"] as const]),
      ], backwardWgsl(rows, experts, grid.index, unit, dlogits.accumulate));
      const resources = [routerLogits, weights, dlogits.tensor];
      if (!unit) resources.push(ctx.gradOutput(0));
      return [engine.dispatch("load_balance backward", kernel, resources, grid.workgroups)];
    },
  });
  return lb;
}
