// The MLP of a CoMiGS block: a gated mixture of E LoRA experts sharing one frozen GPT-2 MLP
// (row-vector convention, PEFT shapes, experts' LoRA tensors stacked along a leading E):
//   pre_j = x·W_f + b_f + s·(x·A_fjᵀ)·B_fjᵀ,   h_j = gelu_tanh(pre_j),
//   y = Σ_j g_j·(h_j·W_p + b_p + s·(h_j·A_pjᵀ)·B_pjᵀ)
// Fused by linearity, so the two big frozen products run once whatever E is:
//   base = x·W_f + b_f (once),   m = Σ_j g_j·h_j,
//   y = m·W_p (once) + (Σ_j g_j)·b_p + s·Σ_j (g_j·u_pj)·B_pjᵀ,   u_fj = x·A_fjᵀ, u_pj = h_j·A_pjᵀ.
// Backward (each gradient only when asked for), with v_pj = dy·B_pj:
//   dm = dy·W_pᵀ (once),   dh_j = g_j·(dm + s·v_pj·A_pj),   dpre_j = dh_j ⊙ gelu'(pre_j),
//   v_fj = s·dpre_j·B_fj,   dx = (Σ_j dpre_j)·W_fᵀ (once) + Σ_j v_fj·A_fj,
//   dgate_j = dm·h_j + dy·b_p + s·u_pj·v_pj (row-wise dots: dy·y_j without forming y_j),
//   dA_fj = v_fjᵀ·x,  dB_fj = s·dpre_jᵀ·u_fj,  dA_pj = s·(g_j·v_pj)ᵀ·h_j,  dB_pj = s·dyᵀ·(g_j·u_pj).
// The big products go through kernels/matmul.ts; the per-expert work runs in the kernels below,
// built like kernels/lora.ts's from the fragments of kernels/tile_codegen.ts (vec4 column groups,
// register tiles, deterministic two-phase sums), each reading expert e's matrices of the stacks:
// forward saves pre_j for every expert ([E, N, H]) and each consumer recomputes h_j = gelu(pre_j)
// on load, which costs compute (cheap here) instead of another [E, N, H] tensor to write and read.
import type { Command } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { GradTarget, Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { sumBlocks } from "./lora.ts";
import { type Operand, product, productCommands } from "./matmul.ts";
import {
  BLOCK_ROWS,
  CONTRACT_ROWS,
  contractInvocations,
  contractLoop,
  contractStores,
  expandLoop,
  floatLiteral,
  launch,
  Matrix,
  outerInvocations,
  outerStep,
  outerStores,
  outerZeros,
  range,
  rankTile,
  RowTile,
  stackRow,
  TILE_GROUPS,
  TILE_ROWS,
  WIDE_TILE,
  WORKGROUP,
  zeroRegisters,
} from "./tile_codegen.ts";

export interface MoeMlpWeights {
  fcWeight: Tensor; // [C, H] frozen (c_fc Conv1D weight)
  fcBias: Tensor; // [H]    frozen
  projWeight: Tensor; // [H, C] frozen (c_proj)
  projBias: Tensor; // [C]    frozen
  fcA: Tensor; // [E, r, C]   experts' c_fc lora_A, stacked
  fcB: Tensor; // [E, H, r]   c_fc lora_B
  projA: Tensor; // [E, r, H]   c_proj lora_A
  projB: Tensor; // [E, C, r]   c_proj lora_B
}

const MAX_EXPERTS = 16;

interface Dims {
  rows: number;
  embd: number;
  hidden: number;
  rank: number;
  experts: number;
}

/** GELU-tanh and its slope on vec4s, in the sigmoid form of kernels/gelu.ts (keeps the tails). */
const GELU = `
const SQRT_2_OVER_PI = 0.7978845608028654;
fn two_u(x: vec4f) -> vec4f { return 2.0 * SQRT_2_OVER_PI * (x + 0.044715 * x * x * x); }
fn sigmoid(z: vec4f) -> vec4f { return 1.0 / (1.0 + exp(-z)); }
fn gelu(x: vec4f) -> vec4f { return x * sigmoid(two_u(x)); }
// (gelu(x), gelu'(x)) from one exp: with a = e^(−|z|) ≤ 1 (never overflows), σ(|z|) = 1/(1 + a)
// and σ(−|z|) = a·σ(|z|) exactly, where 1 − σ would cancel in the tails.
fn gelu_and_slope(x: vec4f) -> array<vec4f, 2> {
  let z = two_u(x);
  let a = exp(-abs(z));
  let big = 1.0 / (1.0 + a);
  let small = a * big;
  let half_one_plus_t = select(small, big, z >= vec4f(0.0));
  let one_minus_t2 = 4.0 * big * small;
  let slope = half_one_plus_t + 0.5 * x * one_minus_t2 * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
  return array<vec4f, 2>(x * half_one_plus_t, slope);
}`;

/** The gate of row `row` (a WGSL expression) and expert `e`, from a [N, E] array<f32>. */
const gateOf = (row: string, experts: number) => `gate[(${row}) * ${experts}u + e]`;

/** `let g<t> = ` the gate of the tile's row t and expert e, for each row of the tile. */
const gateLoads = (tile: RowTile, experts: number) =>
  range(TILE_ROWS).map((t) => `let g${t} = ${gateOf(tile.row(t), experts)};`).join(" ");

interface ContractSpec {
  rows: number;
  k: number;
  rank: number;
  experts: number;
  /** act is [E, N, K] (expert e reads its own rows) rather than one [N, K] shared by all. */
  actPerExpert: boolean;
  /** Contract gelu(act) instead of act (act holds pre_j). */
  actGelu: boolean;
  /** W_e(k, j) = weight[e, j, k] ("rank-major", A [E, r, K]) or weight[e, k, j] (B [E, K, r]). */
  weight: "rank-major" | "k-major";
  scale: number;
}

/**
 * out [E, N, r]: out[e, n, j] = scale · Σ_k act_e[n, k] · W_e(k, j). An invocation holds
 * CONTRACT_ROWS rows × one rank tile of one expert (acc_t_q: row t, rank group q).
 */
function contractWgsl(s: ContractSpec, index: string): string {
  const { rows, k, rank, experts } = s;
  const tile = rankTile(rank);
  const act = new Matrix("act", 0, k, "read");
  const w = new Matrix("weight", 1, s.weight === "rank-major" ? k : rank, "read");
  const result = new Matrix("result", 2, rank, "read_write");
  const actLoad = (t: number) => {
    const load = act.load(stackRow(`min(row0 + ${t}u, ${rows - 1}u)`, rows, s.actPerExpert), "k4");
    return s.actGelu ? `gelu(${load})` : load;
  };
  return `${s.actGelu ? GELU : ""}
${act.declaration()}
${w.declaration()}
${result.declaration()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${contractInvocations(rows, rank, experts)}u) { return; }
  let j0 = (id % ${tile.tiles}u) * ${4 * tile.groups}u;
  let e = (id / ${tile.tiles}u) % ${experts}u;
  let row0 = (id / ${tile.tiles * experts}u) * ${CONTRACT_ROWS}u;
  // acc_t_q[c] = Σ_k act_e[row0 + t, k] · W_e(k, j0 + 4q + c)
  ${zeroRegisters("acc", CONTRACT_ROWS, tile.groups, "  ")}
  ${contractLoop(k, rank, actLoad, w, s.weight, true)}
  ${contractStores(result, rows, s.scale, true)}
}`;
}

interface OuterSpec {
  rows: number;
  wide: number;
  rank: number;
  experts: number;
  /** big is [E, N, W] (per expert) rather than one [N, W] shared by all. */
  bigPerExpert: boolean;
  bigGelu: boolean;
  /** small rows are scaled by the gate of their row and expert. */
  gated: boolean;
  /** Each expert's partial is [r, W] (an A's gradient) or [W, r] (a B's). */
  layout: "rank-major" | "wide-major";
}

/**
 * partial[b, e] = Σ_{n in block b} big_e[n, :] ⊗ (g[n, e]·)small[e, n, :], blocks of BLOCK_ROWS
 * rows. An invocation holds WIDE_TILE column groups × one rank tile of one expert of one block
 * (acc_g_c_q: wide column 4·(w0 + g) + c, rank group q).
 */
function outerWgsl(s: OuterSpec, index: string): string {
  const { rows, wide, rank, experts } = s;
  const tile = rankTile(rank);
  const big = new Matrix("big", 0, wide, "read");
  const small = new Matrix("small", 1, rank, "read");
  const partial = new Matrix("partial", 2, s.layout === "wide-major" ? rank : wide, "read_write");
  const wideTiles = Math.ceil(big.groups / WIDE_TILE);
  const bigLoad = (c4: string) => {
    const load = big.load(stackRow("n", rows, s.bigPerExpert), c4);
    return s.bigGelu ? `gelu(${load})` : load;
  };
  return `${s.bigGelu ? GELU : ""}
${big.declaration()}
${small.declaration()}
${partial.declaration()}
${s.gated ? "@group(0) @binding(3) var<storage, read> gate: array<f32>;" : ""}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${outerInvocations(rows, wide, rank, experts)}u) { return; }
  let w0 = (id % ${wideTiles}u) * ${WIDE_TILE}u;
  let j0 = ((id / ${wideTiles}u) % ${tile.tiles}u) * ${4 * tile.groups}u;
  let e = (id / ${wideTiles * tile.tiles}u) % ${experts}u;
  let b = id / ${wideTiles * tile.tiles * experts}u;
  // acc_g_c_q = Σ_n big_e[n, 4·(w0 + g) + c] · small_e[n, j0 + 4q .. +3]
  ${outerZeros(rank)}
  for (var n = b * ${BLOCK_ROWS}u; n < min((b + 1u) * ${BLOCK_ROWS}u, ${rows}u); n++) {
    ${s.gated ? `let g = ${gateOf("n", experts)};` : ""}
    ${outerStep(small, stackRow("n", rows, true), s.gated, big.groups, bigLoad)}
  }
  ${outerStores(partial, s.layout, wide, rank, `(b * ${experts}u + e)`)}
}`;
}

interface ExpandSpec {
  rows: number;
  wide: number;
  rank: number;
  experts: number;
  /** M_e(j, w) = weight[e, w, j] ("wide-major", B [E, W, r]) or weight[e, j, w] (A [E, r, W]). */
  weight: "wide-major" | "rank-major";
  scale: number;
  gated: boolean;
  /** Also add (Σ_e g[n, e])·bias[w] (the gated mixture's share of the frozen bias). */
  bias: boolean;
  accumulate: boolean;
}

/**
 * result[n, w] (+)= scale·Σ_e Σ_j (g[n, e]·)small[e, n, j]·M_e(j, w) (+ (Σ_e g[n, e])·bias[w]).
 * An invocation holds TILE_ROWS rows × TILE_GROUPS adjacent column groups (acc_t_g).
 */
function expandWgsl(s: ExpandSpec, index: string): string {
  const { rows, wide, rank, experts } = s;
  const small = new Matrix("small", 0, rank, "read");
  const w = new Matrix("weight", 1, s.weight === "rank-major" ? wide : rank, "read");
  const result = new Matrix("result", 2, wide, "read_write");
  const bias = new Matrix("bias", s.gated ? 4 : 3, wide, "read");
  const tile = new RowTile(rows, wide);
  const T = range(TILE_ROWS);
  const write = (t: number, g: number) => {
    const [r, c] = [`row0 + ${t}u`, `c0 + ${g}u`];
    const value = `${floatLiteral(s.scale)} * acc${t}${g}` +
      (s.bias ? ` + gsum${t} * ${bias.load("0u", c)}` : "");
    return result.store(r, c, value, s.accumulate);
  };
  return `
${small.declaration()}
${w.declaration()}
${result.declaration()}
${s.gated ? "@group(0) @binding(3) var<storage, read> gate: array<f32>;" : ""}
${s.bias ? bias.declaration() : ""}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  ${tile.start()}
  // acc_t_g[c] = Σ_e Σ_j (g[row0 + t, e]·)small[e, row0 + t, j] · M_e(j, 4·(c0 + g) + c)
  ${zeroRegisters("acc", TILE_ROWS, TILE_GROUPS, "  ")}
  ${s.bias ? T.map((t) => `var gsum${t} = 0.0;`).join(" ") : ""}
  for (var e = 0u; e < ${experts}u; e++) {
    ${s.gated ? gateLoads(tile, experts) : ""}
    ${s.bias ? T.map((t) => `gsum${t} += g${t};`).join(" ") : ""}
    ${expandLoop(tile, small, w, s.weight, { stacked: true, gated: s.gated }, "    ")}
  }
  ${tile.guardEach(write)}
}`;
}

/**
 * Forward, per tile of [N, H]: for each expert, pre_j = base + s·u_fj·B_fjᵀ (saved), and the
 * mixture m = Σ_j g_j·gelu(pre_j).
 */
function mixForwardWgsl(d: Dims, scale: number, index: string): string {
  const { rows, hidden, rank, experts } = d;
  const base = new Matrix("base", 0, hidden, "read");
  const uf = new Matrix("uf", 1, rank, "read");
  const fcB = new Matrix("fcB", 2, rank, "read");
  const pre = new Matrix("pre", 4, hidden, "read_write");
  const mix = new Matrix("mix", 5, hidden, "read_write");
  const tile = new RowTile(rows, hidden);
  // pre_j of expert e (saved for backward) and its share g_j·gelu(pre_j) of the mixture.
  const perElement = (t: number, g: number) =>
    [
      `let pre${t}${g} = base${t}${g} + ${floatLiteral(scale)} * acc${t}${g};`,
      tile.guard(
        t,
        g,
        pre.store(stackRow(`row0 + ${t}u`, rows, true), `c0 + ${g}u`, `pre${t}${g}`),
      ),
      `mix${t}${g} += g${t} * gelu(pre${t}${g});`,
    ].join("\n    ");
  return `${GELU}
${base.declaration()}
${uf.declaration()}
${fcB.declaration()}
@group(0) @binding(3) var<storage, read> gate: array<f32>;
${pre.declaration()}
${mix.declaration()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  ${tile.start()}
  ${tile.load("base", base)}
  ${zeroRegisters("mix", TILE_ROWS, TILE_GROUPS, "  ")}
  for (var e = 0u; e < ${experts}u; e++) {
    // acc_t_g[c] = u_fe[row0 + t, :] · B_fe[4·(c0 + g) + c, :]
    ${zeroRegisters("acc", TILE_ROWS, TILE_GROUPS, "    ")}
    ${expandLoop(tile, uf, fcB, "wide-major", { stacked: true, gated: false }, "    ")}
    ${gateLoads(tile, experts)}
    ${tile.each(perElement, "    ")}
  }
  ${tile.guardEach((t, g) => mix.store(`row0 + ${t}u`, `c0 + ${g}u`, `mix${t}${g}`))}
}`;
}

/** Which outputs the backward elementwise kernel writes. */
interface MixBackwardOutputs {
  /** dpre_j for every expert [E, N, H] (for dx, dA_f, dB_f). */
  dpre: boolean;
  /** Σ_j dpre_j [N, H] (for dx's big product). */
  dpreSum: boolean;
  /** Per column tile, Σ over its columns of dm·h_j [colTiles, N, E] (for dgate). */
  dgate: boolean;
}

/**
 * Backward, per tile of [N, H]: dh_j = g_j·(dm + s·v_pj·A_pj), dpre_j = dh_j ⊙ gelu'(pre_j),
 * their sum over experts, and the tile's share of the row dots dm·h_j.
 */
function mixBackwardWgsl(d: Dims, scale: number, out: MixBackwardOutputs, index: string): string {
  const { rows, hidden, rank, experts } = d;
  const dm = new Matrix("dm", 0, hidden, "read");
  const pre = new Matrix("pre", 1, hidden, "read");
  const vp = new Matrix("vp", 2, rank, "read");
  const projA = new Matrix("projA", 3, hidden, "read");
  let binding = 5;
  const dpre = new Matrix("dpre", out.dpre ? binding++ : -1, hidden, "read_write");
  const dpreSum = new Matrix("dpre_sum", out.dpreSum ? binding++ : -1, hidden, "read_write");
  const dgateBinding = binding;
  const tile = new RowTile(rows, hidden);
  const T = range(TILE_ROWS);
  // A clamped (duplicate) column group must not count twice in the row dots.
  const dotTerm = (t: number, g: number) =>
    tile.ragged && g > 0
      ? `select(0.0, dot(dm${t}${g}, act${t}${g}[0]), c0 + ${g}u < ${tile.groups}u)`
      : `dot(dm${t}${g}, act${t}${g}[0])`;
  const perElement = (t: number, g: number) =>
    [
      `let pre${t}${g} = ${pre.load(stackRow(tile.row(t), rows, true), tile.group(g))};`,
      `let act${t}${g} = gelu_and_slope(pre${t}${g});`,
      `let dpre${t}${g} = g${t} * (dm${t}${g} + ${floatLiteral(scale)} * acc${t}${g}) * ` +
      `act${t}${g}[1];`,
      out.dpre
        ? tile.guard(
          t,
          g,
          dpre.store(stackRow(`row0 + ${t}u`, rows, true), `c0 + ${g}u`, `dpre${t}${g}`),
        )
        : "",
      out.dpreSum ? `dsum${t}${g} += dpre${t}${g};` : "",
      out.dgate ? `dg${t} += ${dotTerm(t, g)};` : "",
    ].filter(Boolean).join("\n    ");
  return `${GELU}
${dm.declaration()}
${pre.declaration()}
${vp.declaration()}
${projA.declaration()}
@group(0) @binding(4) var<storage, read> gate: array<f32>;
${out.dpre ? dpre.declaration() : ""}
${out.dpreSum ? dpreSum.declaration() : ""}
${
    out.dgate
      ? `@group(0) @binding(${dgateBinding}) var<storage, read_write> dgate_partial: array<f32>;`
      : ""
  }
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${tile.invocations}u) { return; }
  let row0 = (id / ${tile.colTiles}u) * ${TILE_ROWS}u;
  let colTile = id % ${tile.colTiles}u;
  let c0 = colTile * ${TILE_GROUPS}u;
  ${tile.load("dm", dm)}
  ${out.dpreSum ? zeroRegisters("dsum", TILE_ROWS, TILE_GROUPS, "  ") : ""}
  for (var e = 0u; e < ${experts}u; e++) {
    // acc_t_g[c] = v_pe[row0 + t, :] · A_pe[:, 4·(c0 + g) + c]
    ${zeroRegisters("acc", TILE_ROWS, TILE_GROUPS, "    ")}
    ${expandLoop(tile, vp, projA, "rank-major", { stacked: true, gated: false }, "    ")}
    ${gateLoads(tile, experts)}
    ${out.dgate ? T.map((t) => `var dg${t} = 0.0;`).join(" ") : ""}
    ${tile.each(perElement, "    ")}
    ${
    out.dgate
      ? T.map((t) =>
        `if (row0 + ${t}u < ${rows}u) { ` +
        `dgate_partial[(colTile * ${rows}u + row0 + ${t}u) * ${experts}u + e] = dg${t}; }`
      ).join("\n    ")
      : ""
  }
  }
  ${
    out.dpreSum
      ? tile.guardEach((t, g) => dpreSum.store(`row0 + ${t}u`, `c0 + ${g}u`, `dsum${t}${g}`))
      : ""
  }
}`;
}

/**
 * dgate[n, e] (+)= Σ_tiles partial[tile, n, e] + dy[n]·b_p + s·u_pe[n]·v_pe[n]: dy·y_e, the
 * three terms of expert e's output (frozen product, bias, low-rank delta), in a fixed order.
 */
function dgateWgsl(d: Dims, scale: number, accumulate: boolean, index: string): string {
  const { rows, embd, rank, experts } = d;
  const dy = new Matrix("dy", 1, embd, "read");
  const bias = new Matrix("bias", 2, embd, "read");
  const up = new Matrix("up", 3, rank, "read");
  const vp = new Matrix("vp", 4, rank, "read");
  return `
@group(0) @binding(0) var<storage, read> partial: array<f32>;
${dy.declaration()}
${bias.declaration()}
${up.declaration()}
${vp.declaration()}
@group(0) @binding(5) var<storage, read_write> dgate: array<f32>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${rows * experts}u) { return; }
  let n = id / ${experts}u;
  let e = id % ${experts}u;
  var frozen = 0.0;
  for (var t = 0u; t < ${new RowTile(rows, d.hidden).colTiles}u; t++) { frozen += partial[t * ${
    rows * experts
  }u + id]; }
  var biased = 0.0;
  for (var c4 = 0u; c4 < ${dy.groups}u; c4++) { biased += dot(${dy.load("n", "c4")}, ${
    bias.load("0u", "c4")
  }); }
  var low = 0.0;
  for (var q = 0u; q < ${up.groups}u; q++) { low += dot(${up.load(`e * ${rows}u + n`, "q")}, ${
    vp.load(`e * ${rows}u + n`, "q")
  }); }
  dgate[id] = ${accumulate ? "dgate[id] + " : ""}frozen + biased + ${floatLiteral(scale)} * low;
}`;
}

/** A stored [rows, cols] tensor as a matmul operand (used as stored, or transposed). */
function operand(tensor: Tensor, rows: number, cols: number, trans: boolean): Operand {
  return { tensor, rows, cols, trans, batched: false };
}

function checkShapes(x: Tensor, gate: Tensor, w: MoeMlpWeights, scale: number): Dims {
  const [rows, embd] = x.shape;
  const experts = gate.shape[1];
  const hidden = w.fcWeight.shape[1];
  const rank = w.fcA.shape[1];
  const expected: [string, Tensor, number[]][] = [
    ["x", x, [rows, embd]],
    ["gate", gate, [rows, experts]],
    ["fcWeight", w.fcWeight, [embd, hidden]],
    ["fcBias", w.fcBias, [hidden]],
    ["projWeight", w.projWeight, [hidden, embd]],
    ["projBias", w.projBias, [embd]],
    ["fcA", w.fcA, [experts, rank, embd]],
    ["fcB", w.fcB, [experts, hidden, rank]],
    ["projA", w.projA, [experts, rank, hidden]],
    ["projB", w.projB, [experts, embd, rank]],
  ];
  const all = expected.map(([name, t]) => `${name} ${t}`).join(", ");
  const wrong = expected.filter(([_, t, shape]) =>
    t.dtype !== "f32" || t.shape.join() !== shape.join()
  );
  if (x.shape.length !== 2 || gate.shape.length !== 2 || wrong.length > 0) {
    throw new ShapeError(
      `moeMlp: shapes do not fit together (${all}); expected x [N, C], gate [N, E], ` +
        `fcWeight [C, H], fcBias [H], projWeight [H, C], projBias [C], fcA [E, r, C], ` +
        `fcB [E, H, r], projA [E, r, H], projB [E, C, r], all f32` +
        (wrong.length ? `; wrong: ${wrong.map(([name]) => name).join(", ")}` : ""),
    );
  }
  if (experts > MAX_EXPERTS) {
    throw new ShapeError(`moeMlp: ${experts} experts (gate ${gate}); at most ${MAX_EXPERTS}`);
  }
  const trainable = expected.slice(2, 6).filter(([_, t]) => t.requiresGrad);
  if (trainable.length > 0) {
    throw new ShapeError(
      `moeMlp: the base MLP weights must be frozen, but ` +
        `${trainable.map(([name, t]) => `${name} ${t}`).join(", ")} require gradients`,
    );
  }
  if (!Number.isFinite(scale)) throw new ShapeError(`moeMlp: scale ${scale} is not finite`);
  return { rows, embd, hidden, rank, experts };
}

/** y [N, C] = Σ_j gate[n,j]·(h_j·W_p + b_p + s·(h_j·A_pjᵀ)·B_pjᵀ), h_j = gelu_tanh(x·W_f + b_f + s·(x·A_fjᵀ)·B_fjᵀ). */
export function moeMlp(
  tape: Tape,
  x: Tensor, /*[N, C]*/
  gate: Tensor, /*[N, E]*/
  weights: MoeMlpWeights,
  scale: number,
): Tensor {
  const engine = tape.engine;
  const d = checkShapes(x, gate, weights, scale);
  const { rows, embd, hidden, rank, experts } = d;
  const { fcWeight, fcBias, projWeight, projBias, fcA, fcB, projA, projB } = weights;
  /** An unbatched product through kernels/matmul.ts (the frozen base MLP's work). */
  const matmul = (
    label: string,
    a: Operand,
    b: Operand,
    target: GradTarget,
    bias: Tensor | null = null,
  ) => productCommands(engine, product(label, a, b, 1, false, target, bias), engine.variant);
  const overwrite = (tensor: Tensor) => ({ tensor, accumulate: false });
  const base = tape.tensor([rows, hidden], `moe base(${x.label})`);
  const uf = tape.tensor([experts, rows, rank], `moe u_f(${x.label})`);
  const pre = tape.tensor([experts, rows, hidden], `moe pre(${x.label})`);
  const mix = tape.tensor([rows, hidden], `moe mix(${x.label})`);
  const up = tape.tensor([experts, rows, rank], `moe u_p(${x.label})`);
  const y = tape.tensor([rows, embd], `moe mlp(${x.label})`);
  const contract = (
    label: string,
    spec: Omit<ContractSpec, "rows" | "rank" | "experts">,
    resources: Tensor[],
  ) =>
    launch(
      engine,
      label,
      (index) => contractWgsl({ ...spec, rows, rank, experts }, index),
      contractInvocations(rows, rank, experts),
      resources,
      [2],
    );
  const expand = (
    label: string,
    spec: Omit<ExpandSpec, "rows" | "rank" | "experts">,
    resources: Tensor[],
  ) =>
    launch(
      engine,
      label,
      (index) => expandWgsl({ ...spec, rows, rank, experts }, index),
      new RowTile(rows, spec.wide).invocations,
      resources,
      [2],
    );
  const forward = [
    ...matmul(
      "moe base = x·W_f + b_f",
      operand(x, rows, embd, false),
      operand(fcWeight, embd, hidden, false),
      overwrite(base),
      fcBias,
    ),
    contract(
      "moe u_f = x·A_fᵀ",
      { k: embd, actPerExpert: false, actGelu: false, weight: "rank-major", scale: 1 },
      [x, fcA, uf],
    ),
    launch(
      engine,
      "moe pre, mix",
      (index) => mixForwardWgsl(d, scale, index),
      new RowTile(rows, hidden).invocations,
      [base, uf, fcB, gate, pre, mix],
      [4, 5],
    ),
    contract(
      "moe u_p = gelu(pre)·A_pᵀ",
      { k: hidden, actPerExpert: true, actGelu: true, weight: "rank-major", scale: 1 },
      [pre, projA, up],
    ),
    ...matmul(
      "moe y = mix·W_p",
      operand(mix, rows, hidden, false),
      operand(projWeight, hidden, embd, false),
      overwrite(y),
    ),
    expand(
      "moe y += Σg·b_p + s·Σ g·u_p·B_pᵀ",
      { wide: embd, weight: "wide-major", scale, gated: true, bias: true, accumulate: true },
      [up, projB, y, gate, projBias],
    ),
  ];

  /** partial sums of an outer product, then their fixed-order sum into the target. */
  const outer = (
    label: string,
    layout: OuterSpec["layout"],
    spec: Omit<OuterSpec, "rows" | "rank" | "experts" | "layout">,
    big: Tensor,
    small: Tensor,
    sumScale: number,
    target: GradTarget,
  ): Command[] => {
    const shape = layout === "wide-major" ? [spec.wide, rank] : [rank, spec.wide];
    const partial = tape.tensor(
      [Math.ceil(rows / BLOCK_ROWS), experts, ...shape],
      `${label} partials`,
    );
    return [
      launch(
        engine,
        `${label} partials`,
        (index) => outerWgsl({ ...spec, rows, rank, experts, layout }, index),
        outerInvocations(rows, spec.wide, rank, experts),
        spec.gated ? [big, small, partial, gate] : [big, small, partial],
        [2],
      ),
      sumBlocks(engine, label, partial, sumScale, target.tensor, target.accumulate),
    ];
  };

  tape.record({
    name: "moe_mlp",
    inputs: [x, gate, fcA, fcB, projA, projB],
    outputs: [y],
    forward,
    backward: (ctx) => {
      const dy = ctx.gradOutput(0);
      const [dx, dgate, dfcA, dfcB, dprojA, dprojB] = range(6).map((i) => ctx.gradInput(i));
      const commands: Command[] = [];
      if (dprojB) {
        const spec = { wide: embd, bigPerExpert: false, bigGelu: false, gated: true };
        commands.push(...outer("moe dB_p", "wide-major", spec, dy, up, scale, dprojB));
      }
      const needDpre = dx || dfcA || dfcB;
      if (!needDpre && !dgate && !dprojA) return commands;
      const vp = tape.tensor([experts, rows, rank], `moe v_p(${x.label})`);
      commands.push(contract(
        "moe v_p = dy·B_p",
        { k: embd, actPerExpert: false, actGelu: false, weight: "k-major", scale: 1 },
        [dy, projB, vp],
      ));
      if (dprojA) {
        const spec = { wide: hidden, bigPerExpert: true, bigGelu: true, gated: true };
        commands.push(...outer("moe dA_p", "rank-major", spec, pre, vp, scale, dprojA));
      }
      if (!needDpre && !dgate) return commands;
      const dm = tape.tensor([rows, hidden], `moe dm(${x.label})`);
      commands.push(...matmul(
        "moe dm = dy·W_pᵀ",
        operand(dy, rows, embd, false),
        operand(projWeight, hidden, embd, true),
        overwrite(dm),
      ));
      const outputs = { dpre: !!needDpre, dpreSum: !!dx, dgate: !!dgate };
      const dpre = outputs.dpre ? tape.tensor([experts, rows, hidden], "moe dpre") : null;
      const dpreSum = outputs.dpreSum ? tape.tensor([rows, hidden], "moe Σ dpre") : null;
      const dgatePartial = outputs.dgate
        ? tape.tensor([new RowTile(rows, hidden).colTiles, rows, experts], "moe dgate partials")
        : null;
      const written = [dpre, dpreSum, dgatePartial].filter((t): t is Tensor => t !== null);
      commands.push(launch(
        engine,
        "moe dpre",
        (index) => mixBackwardWgsl(d, scale, outputs, index),
        new RowTile(rows, hidden).invocations,
        [dm, pre, vp, projA, gate, ...written],
        written.map((_, i) => 5 + i),
      ));
      if (dgate && dgatePartial) {
        commands.push(launch(
          engine,
          "moe dgate",
          (index) => dgateWgsl(d, scale, dgate.accumulate, index),
          rows * experts,
          [dgatePartial, dy, projBias, up, vp, dgate.tensor],
          [5],
        ));
      }
      if (!dpre) return commands;
      if (dfcB) {
        const spec = { wide: hidden, bigPerExpert: true, bigGelu: false, gated: false };
        commands.push(...outer("moe dB_f", "wide-major", spec, dpre, uf, scale, dfcB));
      }
      if (!dx && !dfcA) return commands;
      const vf = tape.tensor([experts, rows, rank], `moe v_f(${x.label})`);
      commands.push(contract(
        "moe v_f = s·dpre·B_f",
        { k: hidden, actPerExpert: true, actGelu: false, weight: "k-major", scale },
        [dpre, fcB, vf],
      ));
      if (dfcA) {
        const spec = { wide: embd, bigPerExpert: false, bigGelu: false, gated: false };
        commands.push(...outer("moe dA_f", "rank-major", spec, x, vf, 1, dfcA));
      }
      if (dx && dpreSum) {
        commands.push(
          ...matmul(
            "moe dx = Σdpre·W_fᵀ",
            operand(dpreSum, rows, hidden, false),
            operand(fcWeight, embd, hidden, true),
            dx,
          ),
          expand(
            "moe dx += Σ v_f·A_f",
            {
              wide: embd,
              weight: "rank-major",
              scale: 1,
              gated: false,
              bias: false,
              accumulate: true,
            },
            [vf, fcA, dx.tensor],
          ),
        );
      }
      return commands;
    },
  });
  return y;
}
