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
// built like kernels/lora.ts (vec4 column groups, register tiles, deterministic two-phase sums):
// forward saves pre_j for every expert ([E, N, H]) and each consumer recomputes h_j = gelu(pre_j)
// on load, which costs compute (cheap here) instead of another [E, N, H] tensor to write and read.
import type { Command, Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { grid1d } from "./grid.ts";
import { clamp, floatLiteral, Matrix, rankTile, sumBlocks } from "./lora.ts";
import { type Operand, product, productCommands } from "./matmul.ts";

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

const WORKGROUP = 64;
/** Rows each invocation of a contraction handles (as kernels/lora.ts). */
const CONTRACT_ROWS = 8;
/** Rows × adjacent column groups (vec4s) per invocation of the elementwise and expand kernels. */
const TILE_ROWS = 4;
const TILE_GROUPS = 2;
/** Column groups per invocation of the outer products, and rows summed into one partial. */
const WIDE_TILE = 4;
const BLOCK_ROWS = 64;
const MAX_EXPERTS = 16;

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const XYZW = "xyzw";

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
  const T = range(CONTRACT_ROWS), Q = range(tile.groups), C = range(4);
  const actRow = (t: number) =>
    `${s.actPerExpert ? `e * ${rows}u + ` : ""}min(row0 + ${t}u, ${rows - 1}u)`;
  const step = s.weight === "rank-major"
    ? Q.map((q) =>
      C.map((c) =>
        `let w${q}${c} = ${
          w.load(`e * ${rank}u + ${clamp(`j0 + ${4 * q + c}u`, rank - 1, rank % 4 !== 0)}`, "k4")
        };`
      ).join("\n    ") + "\n    " +
      T.map((t) => `acc${t}${q} += vec4f(${C.map((c) => `dot(a${t}, w${q}${c})`).join(", ")});`)
        .join("\n    ")
    ).join("\n    ")
    : C.map((c) =>
      Q.map((q) =>
        `let w${c}${q} = ${
          w.load(`e * ${k}u + ${clamp(`4u * k4 + ${c}u`, k - 1, k % 4 !== 0)}`, `j0 / 4u + ${q}u`)
        };`
      ).join("\n    ") + "\n    " +
      T.map((t) => Q.map((q) => `acc${t}${q} += a${t}.${XYZW[c]} * w${c}${q};`).join(" "))
        .join("\n    ")
    ).join("\n    ");
  const load = (t: number) => act.load(actRow(t), "k4");
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
  ${T.map((t) => Q.map((q) => `var acc${t}${q} = vec4f(0.0);`).join(" ")).join("\n  ")}
  for (var k4 = 0u; k4 < ${act.groups}u; k4++) {
    ${T.map((t) => `let a${t} = ${s.actGelu ? `gelu(${load(t)})` : load(t)};`).join("\n    ")}
    ${step}
  }
  ${
    T.map((t) =>
      `if (row0 + ${t}u < ${rows}u) { ${
        Q.map((q) =>
          result.store(
            `e * ${rows}u + row0 + ${t}u`,
            `j0 / 4u + ${q}u`,
            `${floatLiteral(s.scale)} * acc${t}${q}`,
          )
        ).join(" ")
      } }`
    ).join("\n  ")
  }
}`;
}

function contractInvocations(rows: number, rank: number, experts: number): number {
  return Math.ceil(rows / CONTRACT_ROWS) * experts * rankTile(rank).tiles;
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
  const G = range(WIDE_TILE), C = range(4), Q = range(tile.groups);
  const acc = (g: number, c: number, q: number) => `acc${g}${c}${q}`;
  const slot = `(b * ${experts}u + e)`;
  const store = s.layout === "wide-major"
    ? G.map((g) =>
      C.map((c) =>
        `if (4u * (w0 + ${g}u) + ${c}u < ${wide}u) { ${
          Q.map((q) =>
            partial.store(
              `${slot} * ${wide}u + 4u * (w0 + ${g}u) + ${c}u`,
              `j0 / 4u + ${q}u`,
              acc(g, c, q),
            )
          ).join(" ")
        } }`
      ).join("\n  ")
    ).join("\n  ")
    : G.map((g) =>
      Q.map((q) =>
        C.map((cj) =>
          `if (j0 + ${4 * q + cj}u < ${rank}u && w0 + ${g}u < ${big.groups}u) { ${
            partial.store(
              `${slot} * ${rank}u + j0 + ${4 * q + cj}u`,
              `w0 + ${g}u`,
              `vec4f(${C.map((c) => `${acc(g, c, q)}.${XYZW[cj]}`).join(", ")})`,
            )
          } }`
        ).join("\n  ")
      ).join("\n  ")
    ).join("\n  ");
  const bigRow = `${s.bigPerExpert ? `e * ${rows}u + ` : ""}n`;
  const bigLoad = (g: number) =>
    big.load(bigRow, clamp(`w0 + ${g}u`, big.groups - 1, big.groups % WIDE_TILE !== 0));
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
  ${
    G.map((g) =>
      C.map((c) => Q.map((q) => `var ${acc(g, c, q)} = vec4f(0.0);`).join(" ")).join(" ")
    ).join("\n  ")
  }
  for (var n = b * ${BLOCK_ROWS}u; n < min((b + 1u) * ${BLOCK_ROWS}u, ${rows}u); n++) {
    ${s.gated ? `let g = ${gateOf("n", experts)};` : ""}
    ${
    Q.map((q) =>
      `let s${q} = ${small.load(`e * ${rows}u + n`, `j0 / 4u + ${q}u`)}${s.gated ? " * g" : ""};`
    ).join(" ")
  }
    ${
    G.map((g) =>
      `let g${g} = ${s.bigGelu ? `gelu(${bigLoad(g)})` : bigLoad(g)};
    ${
        C.map((c) => Q.map((q) => `${acc(g, c, q)} += g${g}.${XYZW[c]} * s${q};`).join(" "))
          .join(" ")
      }`
    ).join("\n    ")
  }
  }
  ${store}
}`;
}

function outerInvocations(rows: number, wide: number, rank: number, experts: number): number {
  return Math.ceil(rows / BLOCK_ROWS) * experts * rankTile(rank).tiles *
    Math.ceil(Math.ceil(wide / 4) / WIDE_TILE);
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
  const T = range(TILE_ROWS), G = range(TILE_GROUPS), C = range(4);
  const colTiles = Math.ceil(result.groups / TILE_GROUPS);
  const ragged = result.groups % TILE_GROUPS !== 0;
  const group = (g: number) => clamp(`c0 + ${g}u`, result.groups - 1, ragged);
  const step = s.weight === "rank-major"
    ? G.map((g) =>
      C.map((c) =>
        `let w${g}${c} = ${
          w.load(`e * ${rank}u + ${clamp(`4u * q + ${c}u`, rank - 1, rank % 4 !== 0)}`, group(g))
        };`
      ).join(" ") + "\n      " +
      T.map((t) => `acc${t}${g} += ${C.map((c) => `s${t}.${XYZW[c]} * w${g}${c}`).join(" + ")};`)
        .join("\n      ")
    ).join("\n      ")
    : G.map((g) =>
      C.map((c) =>
        `let w${g}${c} = ${
          w.load(
            `e * ${wide}u + ${clamp(`4u * (${group(g)}) + ${c}u`, wide - 1, wide % 4 !== 0)}`,
            "q",
          )
        };`
      ).join(" ") + "\n      " +
      T.map((t) => `acc${t}${g} += vec4f(${C.map((c) => `dot(s${t}, w${g}${c})`).join(", ")});`)
        .join("\n      ")
    ).join("\n      ");
  const row = (t: number) => `min(row0 + ${t}u, ${rows - 1}u)`;
  const write = (t: number, g: number) => {
    const [r, c] = [`row0 + ${t}u`, `c0 + ${g}u`];
    const value = `${floatLiteral(s.scale)} * acc${t}${g}` +
      (s.bias ? ` + gsum${t} * ${bias.load("0u", c)}` : "");
    return result.store(r, c, value, s.accumulate);
  };
  const inRange = (t: number, g: number) =>
    `row0 + ${t}u < ${rows}u${ragged ? ` && c0 + ${g}u < ${result.groups}u` : ""}`;
  return `
${small.declaration()}
${w.declaration()}
${result.declaration()}
${s.gated ? "@group(0) @binding(3) var<storage, read> gate: array<f32>;" : ""}
${s.bias ? bias.declaration() : ""}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${Math.ceil(rows / TILE_ROWS) * colTiles}u) { return; }
  let row0 = (id / ${colTiles}u) * ${TILE_ROWS}u;
  let c0 = (id % ${colTiles}u) * ${TILE_GROUPS}u;
  // acc_t_g[c] = Σ_e Σ_j (g[row0 + t, e]·)small[e, row0 + t, j] · M_e(j, 4·(c0 + g) + c)
  ${T.map((t) => G.map((g) => `var acc${t}${g} = vec4f(0.0);`).join(" ")).join("\n  ")}
  ${s.bias ? T.map((t) => `var gsum${t} = 0.0;`).join(" ") : ""}
  for (var e = 0u; e < ${experts}u; e++) {
    ${s.gated ? T.map((t) => `let g${t} = ${gateOf(row(t), experts)};`).join(" ") : ""}
    ${s.bias ? T.map((t) => `gsum${t} += g${t};`).join(" ") : ""}
    for (var q = 0u; q < ${small.groups}u; q++) {
      ${
    T.map((t) =>
      `let s${t} = ${small.load(`e * ${rows}u + ${row(t)}`, "q")}${s.gated ? ` * g${t}` : ""};`
    ).join(" ")
  }
      ${step}
    }
  }
  ${
    T.map((t) => G.map((g) => `if (${inRange(t, g)}) { ${write(t, g)} }`).join("\n  ")).join("\n  ")
  }
}`;
}

function tileInvocations(rows: number, wide: number): number {
  return Math.ceil(rows / TILE_ROWS) * Math.ceil(Math.ceil(wide / 4) / TILE_GROUPS);
}

/** Column tiles of [N, H] in the elementwise kernels (the dgate partials' leading dimension). */
function colTilesOf(hidden: number): number {
  return Math.ceil(Math.ceil(hidden / 4) / TILE_GROUPS);
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
  const T = range(TILE_ROWS), G = range(TILE_GROUPS), C = range(4);
  const ragged = base.groups % TILE_GROUPS !== 0;
  const group = (g: number) => clamp(`c0 + ${g}u`, base.groups - 1, ragged);
  const row = (t: number) => `min(row0 + ${t}u, ${rows - 1}u)`;
  const inRange = (t: number, g: number) =>
    `row0 + ${t}u < ${rows}u${ragged ? ` && c0 + ${g}u < ${base.groups}u` : ""}`;
  const colTiles = colTilesOf(hidden);
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
  if (id >= ${Math.ceil(rows / TILE_ROWS) * colTiles}u) { return; }
  let row0 = (id / ${colTiles}u) * ${TILE_ROWS}u;
  let c0 = (id % ${colTiles}u) * ${TILE_GROUPS}u;
  ${
    T.map((t) => G.map((g) => `let base${t}${g} = ${base.load(row(t), group(g))};`).join(" "))
      .join("\n  ")
  }
  ${T.map((t) => G.map((g) => `var mix${t}${g} = vec4f(0.0);`).join(" ")).join("\n  ")}
  for (var e = 0u; e < ${experts}u; e++) {
    // acc_t_g[c] = u_fe[row0 + t, :] · B_fe[4·(c0 + g) + c, :]
    ${T.map((t) => G.map((g) => `var acc${t}${g} = vec4f(0.0);`).join(" ")).join("\n    ")}
    for (var q = 0u; q < ${uf.groups}u; q++) {
      ${T.map((t) => `let s${t} = ${uf.load(`e * ${rows}u + ${row(t)}`, "q")};`).join(" ")}
      ${
    G.map((g) =>
      C.map((c) =>
        `let w${g}${c} = ${
          fcB.load(
            `e * ${hidden}u + ${clamp(`4u * (${group(g)}) + ${c}u`, hidden - 1, hidden % 4 !== 0)}`,
            "q",
          )
        };`
      ).join(" ") + "\n      " +
      T.map((t) => `acc${t}${g} += vec4f(${C.map((c) => `dot(s${t}, w${g}${c})`).join(", ")});`)
        .join("\n      ")
    ).join("\n      ")
  }
    }
    ${T.map((t) => `let g${t} = ${gateOf(row(t), experts)};`).join(" ")}
    ${
    T.map((t) =>
      G.map((g) =>
        `let pre${t}${g} = base${t}${g} + ${floatLiteral(scale)} * acc${t}${g};
    if (${inRange(t, g)}) { ${
          pre.store(`e * ${rows}u + row0 + ${t}u`, `c0 + ${g}u`, `pre${t}${g}`)
        } }
    mix${t}${g} += g${t} * gelu(pre${t}${g});`
      ).join("\n    ")
    ).join("\n    ")
  }
  }
  ${
    T.map((t) =>
      G.map((g) =>
        `if (${inRange(t, g)}) { ${mix.store(`row0 + ${t}u`, `c0 + ${g}u`, `mix${t}${g}`)} }`
      ).join("\n  ")
    ).join("\n  ")
  }
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
  const T = range(TILE_ROWS), G = range(TILE_GROUPS), C = range(4);
  const ragged = dm.groups % TILE_GROUPS !== 0;
  const group = (g: number) => clamp(`c0 + ${g}u`, dm.groups - 1, ragged);
  const row = (t: number) => `min(row0 + ${t}u, ${rows - 1}u)`;
  const inRange = (t: number, g: number) =>
    `row0 + ${t}u < ${rows}u${ragged ? ` && c0 + ${g}u < ${dm.groups}u` : ""}`;
  const colTiles = colTilesOf(hidden);
  // A clamped (duplicate) column group must not count twice in the row dots.
  const dotTerm = (t: number, g: number) =>
    ragged && g > 0
      ? `select(0.0, dot(dm${t}${g}, act${t}${g}[0]), c0 + ${g}u < ${dm.groups}u)`
      : `dot(dm${t}${g}, act${t}${g}[0])`;
  const perElement = (t: number, g: number) =>
    [
      `let pre${t}${g} = ${pre.load(`e * ${rows}u + ${row(t)}`, group(g))};`,
      `let act${t}${g} = gelu_and_slope(pre${t}${g});`,
      `let dpre${t}${g} = g${t} * (dm${t}${g} + ${floatLiteral(scale)} * acc${t}${g}) * ` +
      `act${t}${g}[1];`,
      out.dpre
        ? `if (${inRange(t, g)}) { ${
          dpre.store(`e * ${rows}u + row0 + ${t}u`, `c0 + ${g}u`, `dpre${t}${g}`)
        } }`
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
  if (id >= ${Math.ceil(rows / TILE_ROWS) * colTiles}u) { return; }
  let row0 = (id / ${colTiles}u) * ${TILE_ROWS}u;
  let colTile = id % ${colTiles}u;
  let c0 = colTile * ${TILE_GROUPS}u;
  ${
    T.map((t) => G.map((g) => `let dm${t}${g} = ${dm.load(row(t), group(g))};`).join(" "))
      .join("\n  ")
  }
  ${
    out.dpreSum
      ? T.map((t) => G.map((g) => `var dsum${t}${g} = vec4f(0.0);`).join(" ")).join("\n  ")
      : ""
  }
  for (var e = 0u; e < ${experts}u; e++) {
    // acc_t_g[c] = v_pe[row0 + t, :] · A_pe[:, 4·(c0 + g) + c]
    ${T.map((t) => G.map((g) => `var acc${t}${g} = vec4f(0.0);`).join(" ")).join("\n    ")}
    for (var q = 0u; q < ${vp.groups}u; q++) {
      ${T.map((t) => `let s${t} = ${vp.load(`e * ${rows}u + ${row(t)}`, "q")};`).join(" ")}
      ${
    G.map((g) =>
      C.map((c) =>
        `let w${g}${c} = ${
          projA.load(
            `e * ${rank}u + ${clamp(`4u * q + ${c}u`, rank - 1, rank % 4 !== 0)}`,
            group(g),
          )
        };`
      ).join(" ") + "\n      " +
      T.map((t) => `acc${t}${g} += ${C.map((c) => `s${t}.${XYZW[c]} * w${g}${c}`).join(" + ")};`)
        .join("\n      ")
    ).join("\n      ")
  }
    }
    ${T.map((t) => `let g${t} = ${gateOf(row(t), experts)};`).join(" ")}
    ${out.dgate ? T.map((t) => `var dg${t} = 0.0;`).join(" ") : ""}
    ${T.map((t) => G.map((g) => perElement(t, g)).join("\n    ")).join("\n    ")}
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
      ? T.map((t) =>
        G.map((g) =>
          `if (${inRange(t, g)}) { ${dpreSum.store(`row0 + ${t}u`, `c0 + ${g}u`, `dsum${t}${g}`)} }`
        ).join("\n  ")
      ).join("\n  ")
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
  for (var t = 0u; t < ${colTilesOf(d.hidden)}u; t++) { frozen += partial[t * ${
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

/** One dispatch of a generated kernel; `writable` lists the read_write bindings. */
function launch(
  engine: Engine,
  label: string,
  wgsl: (index: string) => string,
  invocations: number,
  resources: readonly Tensor[],
  writable: readonly number[],
): Command {
  const grid = grid1d(invocations, WORKGROUP);
  const bindings = resources.map((_, i) => writable.includes(i) ? "rw" as const : "read" as const);
  const kernel = engine.kernel(label, wgsl(grid.index), bindings);
  return engine.dispatch(label, kernel, resources, grid.workgroups);
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
  const matmul = (p: Parameters<typeof product>) =>
    productCommands(engine, product(...p), engine.variant);
  const base = tape.tensor([rows, hidden], `moe base(${x.label})`);
  const uf = tape.tensor([experts, rows, rank], `moe u_f(${x.label})`);
  const pre = tape.tensor([experts, rows, hidden], `moe pre(${x.label})`);
  const mix = tape.tensor([rows, hidden], `moe mix(${x.label})`);
  const up = tape.tensor([experts, rows, rank], `moe u_p(${x.label})`);
  const y = tape.tensor([rows, embd], `moe mlp(${x.label})`);
  const contract = (
    label: string,
    spec: Omit<ContractSpec, "rows" | "experts">,
    act: Tensor,
    w: Tensor,
    out: Tensor,
  ) =>
    launch(
      engine,
      label,
      (index) => contractWgsl({ ...spec, rows, experts }, index),
      contractInvocations(rows, spec.rank, experts),
      [act, w, out],
      [2],
    );
  const forward = [
    ...matmul([
      "moe base = x·W_f + b_f",
      operand(x, rows, embd, false),
      operand(fcWeight, embd, hidden, false),
      1,
      false,
      { tensor: base, accumulate: false },
      fcBias,
    ]),
    contract(
      "moe u_f = x·A_fᵀ",
      {
        k: embd,
        rank,
        actPerExpert: false,
        actGelu: false,
        weight: "rank-major",
        scale: 1,
      },
      x,
      fcA,
      uf,
    ),
    launch(
      engine,
      "moe pre, mix",
      (index) => mixForwardWgsl(d, scale, index),
      tileInvocations(rows, hidden),
      [base, uf, fcB, gate, pre, mix],
      [4, 5],
    ),
    contract(
      "moe u_p = gelu(pre)·A_pᵀ",
      {
        k: hidden,
        rank,
        actPerExpert: true,
        actGelu: true,
        weight: "rank-major",
        scale: 1,
      },
      pre,
      projA,
      up,
    ),
    ...matmul([
      "moe y = mix·W_p",
      operand(mix, rows, hidden, false),
      operand(projWeight, hidden, embd, false),
      1,
      false,
      { tensor: y, accumulate: false },
      null,
    ]),
    launch(
      engine,
      "moe y += Σg·b_p + s·Σ g·u_p·B_pᵀ",
      (index) =>
        expandWgsl({
          rows,
          wide: embd,
          rank,
          experts,
          weight: "wide-major",
          scale,
          gated: true,
          bias: true,
          accumulate: true,
        }, index),
      tileInvocations(rows, embd),
      [up, projB, y, gate, projBias],
      [2],
    ),
  ];

  /** partial sums of an outer product, then their fixed-order sum into the target. */
  const outer = (
    label: string,
    spec: Omit<OuterSpec, "rows" | "rank" | "experts">,
    big: Tensor,
    small: Tensor,
    sumScale: number,
    target: { tensor: Tensor; accumulate: boolean },
  ): Command[] => {
    const shape = spec.layout === "wide-major" ? [spec.wide, rank] : [rank, spec.wide];
    const partial = tape.tensor(
      [Math.ceil(rows / BLOCK_ROWS), experts, ...shape],
      `${label} partials`,
    );
    return [
      launch(
        engine,
        `${label} partials`,
        (index) => outerWgsl({ ...spec, rows, rank, experts }, index),
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
        commands.push(...outer(
          "moe dB_p",
          {
            wide: embd,
            bigPerExpert: false,
            bigGelu: false,
            gated: true,
            layout: "wide-major",
          },
          dy,
          up,
          scale,
          dprojB,
        ));
      }
      const needDpre = dx || dfcA || dfcB;
      if (!needDpre && !dgate && !dprojA) return commands;
      const vp = tape.tensor([experts, rows, rank], `moe v_p(${x.label})`);
      commands.push(contract(
        "moe v_p = dy·B_p",
        {
          k: embd,
          rank,
          actPerExpert: false,
          actGelu: false,
          weight: "k-major",
          scale: 1,
        },
        dy,
        projB,
        vp,
      ));
      if (dprojA) {
        commands.push(...outer(
          "moe dA_p",
          {
            wide: hidden,
            bigPerExpert: true,
            bigGelu: true,
            gated: true,
            layout: "rank-major",
          },
          pre,
          vp,
          scale,
          dprojA,
        ));
      }
      if (!needDpre && !dgate) return commands;
      const dm = tape.tensor([rows, hidden], `moe dm(${x.label})`);
      commands.push(...matmul([
        "moe dm = dy·W_pᵀ",
        operand(dy, rows, embd, false),
        operand(projWeight, hidden, embd, true),
        1,
        false,
        { tensor: dm, accumulate: false },
        null,
      ]));
      const outputs = { dpre: !!needDpre, dpreSum: !!dx, dgate: !!dgate };
      const dpre = outputs.dpre ? tape.tensor([experts, rows, hidden], "moe dpre") : null;
      const dpreSum = outputs.dpreSum ? tape.tensor([rows, hidden], "moe Σ dpre") : null;
      const dgatePartial = outputs.dgate
        ? tape.tensor([colTilesOf(hidden), rows, experts], "moe dgate partials")
        : null;
      const written = [dpre, dpreSum, dgatePartial].filter((t): t is Tensor => t !== null);
      commands.push(launch(
        engine,
        "moe dpre",
        (index) => mixBackwardWgsl(d, scale, outputs, index),
        tileInvocations(rows, hidden),
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
        commands.push(...outer(
          "moe dB_f",
          {
            wide: hidden,
            bigPerExpert: true,
            bigGelu: false,
            gated: false,
            layout: "wide-major",
          },
          dpre,
          uf,
          scale,
          dfcB,
        ));
      }
      if (!dx && !dfcA) return commands;
      const vf = tape.tensor([experts, rows, rank], `moe v_f(${x.label})`);
      commands.push(contract(
        "moe v_f = s·dpre·B_f",
        {
          k: hidden,
          rank,
          actPerExpert: true,
          actGelu: false,
          weight: "k-major",
          scale,
        },
        dpre,
        fcB,
        vf,
      ));
      if (dfcA) {
        commands.push(...outer(
          "moe dA_f",
          {
            wide: embd,
            bigPerExpert: false,
            bigGelu: false,
            gated: false,
            layout: "rank-major",
          },
          x,
          vf,
          1,
          dfcA,
        ));
      }
      if (dx && dpreSum) {
        commands.push(
          ...matmul([
            "moe dx = Σdpre·W_fᵀ",
            operand(dpreSum, rows, hidden, false),
            operand(fcWeight, embd, hidden, true),
            1,
            false,
            dx,
            null,
          ]),
          launch(
            engine,
            "moe dx += Σ v_f·A_f",
            (index) =>
              expandWgsl({
                rows,
                wide: embd,
                rank,
                experts,
                weight: "rank-major",
                scale: 1,
                gated: false,
                bias: false,
                accumulate: true,
              }, index),
            tileInvocations(rows, embd),
            [vf, fcA, dx.tensor],
            [2],
          ),
        );
      }
      return commands;
    },
  });
  return y;
}
