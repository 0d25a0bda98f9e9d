// Causal multi-head self-attention as Hugging Face GPT-2 computes it after c_attn:
//   q, k, v = the three C-wide thirds of qkv; head h uses columns h·hs .. (h+1)·hs of each,
//   S = q·kᵀ/√hs over keys j ≤ query i,  P = softmax_j(S),  out = P·v,  heads concatenated.
// and grouped-query attention as it computes Llama and Qwen2's (`groupedAttention`):
//   q [B, T, H·hs], k and v [B, T, KV·hs] as q_proj, k_proj, v_proj give them (after RoPE),
//   query head h attends with key/value head h div G, G = H/KV (HF's repeat_kv, without the
//   copies: the kernels index the KV head). KV = H is multi-head, KV = 1 multi-query attention.
//
// Flash-attention style: the B·H·T² probabilities are never stored (200–400 MB at GPT-2 sizes,
// over the 128 MiB binding limit). The forward pass keeps a running max m and sum l per query
// row (online softmax) and saves only lse = m + log l per row. Backward recomputes
// P = exp(S − lse) and, with D_i = Σ_d dO_i·O_i,
//   dS = P ⊙ (dO·vᵀ − D),   dq = dS·k/√hs,   dk = dSᵀ·q/√hs,   dv = Pᵀ·dO.
// dq comes from a kernel that owns query rows and sums over keys in order; dk and dv from one
// that owns key rows and sums over queries in order (grouped: over the G query heads of its KV
// head in order, then their queries): deterministic, no atomics.
//
// The kernels are register tiles: an invocation owns R consecutive rows and streams the other
// side's rows past them, so each loaded vec4 feeds R rows (R = 8: 4-5x faster than R = 1).
// Operands are first packed (q scaled by 1/√hs, every head zero-padded to hs4 = ⌈hs/4⌉ texels,
// so odd head sizes run the same vec4 code) into read-only rgba32float storage textures
// (variant `texture`: lavapipe fetches texels vectorised, measured 1.2-2x faster than its
// per-lane storage-buffer loads, which workgroup-memory tiles did not beat either) or into vec4
// storage buffers (variant `storage`). Memory saved for backward: the packed qkv (the size of
// qkv; grouped: of q, k and v, K and V once) and lse [B, T, H]; backward adds a packed dO with
// (lse, D) per row and head. Both entry points share every kernel but the packing of operands
// and where gradients are written, and GPT-2's kernels are the same WGSL as before grouping.
import type { BindingKind } from "../engine/bindings.ts";
import type { Command, Engine } from "../engine/device.ts";
import { LimitError, ShapeError } from "../engine/errors.ts";
import type { BackwardContext, Tape } from "../engine/tape.ts";
import { sharesMemory, type Tensor } from "../engine/tensor.ts";
import { grid1d } from "./grid.ts";
import { type KernelVariant, kernelVariant } from "./variant.ts";

/** A masked score: exp(MASKED − m) underflows to 0 for every real running max m. */
const MASKED = "-3.0e38";
const PACK_WORKGROUP = 64;
/** Invocations per workgroup of the attention kernels. */
const WORKGROUP = 64;
/**
 * lavapipe silently ends the loops of an invocation after 65535 iterations in total
 * (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS); each kernel loops once over ⌈T / block⌉ steps.
 */
const MAX_LOOP_ITERATIONS = 65535;

interface Shape {
  B: number;
  T: number;
  /** Width of the output, H·hs. */
  C: number;
  /** Query heads, and key/value heads (KV divides H; KV = H for GPT-2). */
  H: number;
  KV: number;
  hs: number;
  /** Texels per head in the packed layouts. */
  hs4: number;
}

/** How a kernel tiles rows: R rows per invocation, `block` streamed rows per loop step. */
interface Tiling {
  rows: number;
  block: number;
}

// Measured on lavapipe (idle machine, GPT-2 head size 64). T=1024: forward 8 rows × 4 keys per
// step 41 GFLOP/s (8×2: 38, 4×2: 34); backward 6 rows × 2 queries/keys 40–42 GFLOP/s (8×2:
// 41–46 but its LLVM compile takes 22 s instead of 9 s; 4×2: 35–36). T ≤ 256: the causal
// diagonal of each 8-lane SIMD group (8·R rows) is wasted work, and 4×2 is as fast as any.
function forwardTiling(T: number): Tiling {
  return T <= 256 ? { rows: 4, block: 2 } : { rows: 8, block: 4 };
}
function backwardTiling(T: number): Tiling {
  return T <= 256 ? { rows: 4, block: 2 } : { rows: 6, block: 2 };
}

/**
 * Rows of vec4 texels in a texture (folded into side-by-side stacks when there are more rows
 * than the texture may be tall) or in a storage buffer.
 */
class PackedRows {
  readonly resource: GPUTextureView | Tensor;
  /** Rows per texture stack when there are more rows than a texture is tall, else null. */
  readonly #stackHeight: number | null = null;

  constructor(
    tape: Tape,
    rows: number,
    readonly width: number,
    readonly variant: KernelVariant,
    label: string,
  ) {
    if (variant === "storage") {
      this.resource = tape.tensor([rows, width * 4], label);
      return;
    }
    const max = tape.engine.limits.maxTextureDimension2D;
    const height = Math.min(rows, max);
    const stacks = Math.ceil(rows / height);
    if (stacks * width > max) {
      throw new LimitError(`${label}: ${rows} rows of ${width} texels do not fit a texture`);
    }
    if (stacks > 1) this.#stackHeight = height;
    this.resource = tape.texture(stacks * width, height, label).createView();
  }

  binding(access: "read" | "write"): BindingKind {
    if (this.variant === "storage") return access === "read" ? "read" : "rw";
    return access === "read" ? "tex-read" : "tex-write";
  }

  declare(name: string, binding: number, access: "read" | "write"): string {
    const type = this.variant === "storage"
      ? `var<storage, ${access === "read" ? "read" : "read_write"}> ${name}: array<vec4f>`
      : `var ${name}: texture_storage_2d<rgba32float, ${access}>`;
    return `@group(0) @binding(${binding}) ${type};`;
  }

  load(name: string, row: string, col: string): string {
    return this.variant === "storage"
      ? `${name}[(${row}) * ${this.width}u + ${col}]`
      : `textureLoad(${name}, ${this.#coord(row, col)})`;
  }

  store(name: string, row: string, col: string, value: string): string {
    return this.variant === "storage"
      ? `${name}[(${row}) * ${this.width}u + ${col}] = ${value};`
      : `textureStore(${name}, ${this.#coord(row, col)}, ${value});`;
  }

  /** Texel coordinate of (row, col): row r lives in stack ⌊r / height⌋, side by side. */
  #coord(row: string, col: string): string {
    const h = this.#stackHeight;
    if (h === null) return `vec2u(${col}, ${row})`;
    return `vec2u((${row}) / ${h}u * ${this.width}u + ${col}, (${row}) % ${h}u)`;
  }
}

// ---- WGSL building blocks ----

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** `lines` indented by `depth` levels of two spaces. */
function indent(depth: number, lines: string[]): string[] {
  return lines.map((line) => `${"  ".repeat(depth)}${line}`);
}

/** Σ_c a_c·b_c over vec4 pairs: one vec4 fma chain (four independent lanes), summed at the end. */
function dotSum(a: (c: number) => string, b: (c: number) => string, n: number): string {
  let acc = `${a(0)} * ${b(0)}`;
  for (let c = 1; c < n; c++) acc = `fma(${a(c)}, ${b(c)}, ${acc})`;
  return `hsum(${acc})`;
}

const HSUM = `fn hsum(v: vec4f) -> f32 { return (v.x + v.y) + (v.z + v.w); }`;

/**
 * Lets `${name}_c` holding one head's texels c < hs4 of a packed row: `row` is the row and `col`
 * the head's first column (WGSL expressions) in `src`.
 */
function texelLets(
  s: Shape,
  packed: PackedRows,
  src: string,
  name: string,
  row: string,
  col: string,
): string[] {
  return range(s.hs4).map((c) => `let ${name}_${c} = ${packed.load(src, row, `${col} + ${c}u`)};`);
}

/** What the backward kernels read of key row n (`row`): its k and v texels, k${n}_c and v${n}_c. */
function keyRowLets(s: Shape, qkv: PackedRows, n: number, row: string): string[] {
  return [
    ...texelLets(s, qkv, "qkv", `k${n}`, row, "kCol"),
    ...texelLets(s, qkv, "qkv", `v${n}`, row, "vCol"),
  ];
}

/**
 * What the backward kernels read of query row n (`row`): its q and dO texels, q${n}_c and
 * g${n}_c, and stats${n} = (lse, D).
 */
function queryRowLets(
  s: Shape,
  qkv: PackedRows,
  grad: PackedRows,
  n: number,
  row: string,
): string[] {
  return [
    ...texelLets(s, qkv, "qkv", `q${n}`, row, "qCol"),
    ...texelLets(s, grad, "grad", `g${n}`, row, "gCol"),
    `let stats${n} = ${grad.load("grad", row, "statsCol")};`,
  ];
}

/**
 * The backward kernels' recomputed probability and score gradient for query row i (texels q${i},
 * g${i}, stats${i}) and key row j (texels k${j}, v${j}): P_ij = exp(q_i·k_j − lse_i) where
 * `visible` (else 0) and dS_ij = P_ij·(dO_i·v_j − D_i), named p${name} and ds${name}.
 */
function scoreGradLets(s: Shape, i: number, j: number, name: string, visible: string): string[] {
  const score = dotSum((c) => `q${i}_${c}`, (c) => `k${j}_${c}`, s.hs4);
  const dp = dotSum((c) => `g${i}_${c}`, (c) => `v${j}_${c}`, s.hs4);
  return [
    `let p${name} = select(0.0, exp(${score} - stats${i}.x), ${visible});`,
    `let ds${name} = p${name} * (${dp} - stats${i}.y);`,
  ];
}

/**
 * Statements writing one head's row (vec4 values named by `value(c)`, times `scale`) into a
 * row-major f32 tensor at element `start` (a WGSL expression), adding to what is there when
 * `accumulate`. The tensor is an array<vec4f> when hs is a multiple of 4, else array<f32>.
 */
function writeHead(
  s: Shape,
  target: string,
  start: string,
  value: (c: number) => string,
  scale: string,
  accumulate: boolean,
): string[] {
  const lines: string[] = [];
  const add = (ref: string) => accumulate ? `${ref} + ` : "";
  if (s.hs % 4 === 0) {
    for (let c = 0; c < s.hs4; c++) {
      const ref = `${target}[(${start}) / 4u + ${c}u]`;
      lines.push(`${ref} = ${add(ref)}${value(c)} * ${scale};`);
    }
    return lines;
  }
  for (let d = 0; d < s.hs; d++) {
    const ref = `${target}[${start} + ${d}u]`;
    lines.push(`${ref} = ${add(ref)}${value(d >> 2)}.${"xyzw"[d & 3]} * ${scale};`);
  }
  return lines;
}

function elementType(s: Shape): string {
  return s.hs % 4 === 0 ? "vec4f" : "f32";
}

/**
 * WGSL expression loading texel c (4 elements, zero past hs) of one head's row from a row-major
 * f32 tensor `src` bound as array<vec4f> (hs a multiple of 4) or array<f32> (`start` is an
 * element index).
 */
function loadHead(s: Shape, src: string, start: string, c: number): string {
  if (s.hs % 4 === 0) return `${src}[(${start}) / 4u + ${c}u]`;
  const parts = range(4).map((e) => 4 * c + e < s.hs ? `${src}[${start} + ${4 * c + e}u]` : "0.0");
  return `vec4f(${parts.join(", ")})`;
}

/**
 * A row-tiled kernel (forward, grad query, grad key value): `bindings`, then `fn main`, where
 * invocation (wg.x, lane) owns R rows from `first` of head wg.y in sequence wg.z, whose q, k and
 * v texels start at qCol, kCol and vCol of the packed qkv (see headColumns); then `body`. An
 * owner of query rows sees keys up to `last`, its last row (causal); an owner of key rows sees
 * queries to T − 1.
 */
function rowTileKernel(
  s: Shape,
  R: number,
  owns: "queries" | "keys",
  bindings: string[],
  body: string[],
): string {
  const last = owns === "queries" ? `\n  let last = min(first + ${R - 1}u, ${s.T - 1}u);` : "";
  return `
${bindings.join("\n")}
${HSUM}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lane: u32) {
  let first = (wg.x * ${WORKGROUP}u + lane) * ${R}u;
  if (first >= ${s.T}u) { return; }
  let head = wg.y;
  let seq = wg.z * ${s.T}u;${last}
${headColumns(s, owns).join("\n")}
${body.join("\n")}
}`;
}

/**
 * Where the texels of head `head` start in a packed row [q heads | k heads | v heads]: qCol,
 * kCol, vCol. Query head h reads key/value head h div G (G = H/KV: grouped-query attention
 * without copying K and V); with G = 1 every head reads its own. An owner of key rows of a
 * grouped attention runs over a KV head's G query heads itself, so it gets kCol and vCol only.
 */
function headColumns(s: Shape, owns: "queries" | "keys"): string[] {
  const G = s.H / s.KV;
  if (G === 1) {
    return [
      `  let qCol = head * ${s.hs4}u;`,
      `  let kCol = ${s.H * s.hs4}u + qCol;`,
      `  let vCol = ${2 * s.H * s.hs4}u + qCol;`,
    ];
  }
  const kvHead = owns === "queries" ? `head / ${G}u` : "head";
  return [
    ...(owns === "queries" ? [`  let qCol = head * ${s.hs4}u;`] : []),
    `  let kCol = ${s.H * s.hs4}u + ${kvHead} * ${s.hs4}u;`,
    `  let vCol = ${(s.H + s.KV) * s.hs4}u + ${kvHead} * ${s.hs4}u;`,
  ];
}

/**
 * A backward row-tiled kernel: reads the packed qkv and the packed dO, where the query head's
 * dO texels start at gCol and its (lse, D) texel is at statsCol (set by `body` for each query
 * head of the group when it owns key rows of a grouped attention), and writes the row-major
 * arrays named by `outputs`.
 */
function backwardKernel(
  s: Shape,
  qkv: PackedRows,
  grad: PackedRows,
  R: number,
  owns: "queries" | "keys",
  outputs: string[],
  body: string[],
): string {
  const perQueryHead = owns === "keys" && s.H !== s.KV;
  const columns = perQueryHead
    ? []
    : ["  let gCol = qCol;", `  let statsCol = ${s.H * s.hs4}u + head;`];
  return rowTileKernel(s, R, owns, [
    qkv.declare("qkv", 0, "read"),
    grad.declare("grad", 1, "read"),
    ...outputs.map((name, n) =>
      `@group(0) @binding(${2 + n}) var<storage, read_write> ${name}: array<${elementType(s)}>;`
    ),
  ], [...columns, ...body]);
}

/**
 * Where backward writes dq, dk or dv: into the row-major array `name` whose rows are `width`
 * elements, head h at columns offset + h·hs .. offset + (h+1)·hs, adding when `accumulate`.
 */
interface GradOutput {
  name: string;
  width: number;
  offset: number;
  accumulate: boolean;
}

/**
 * The stores of a row-tiled kernel's results: `store(r)` for each owned row r < R that exists
 * (the last tile may run past T).
 */
function ownedRowStores(s: Shape, R: number, store: (r: number) => string[]): string[] {
  return range(R).flatMap((r) => [
    `  if (first + ${r}u < ${s.T}u) {`,
    ...indent(2, store(r)),
    "  }",
  ]);
}

// ---- kernels ----

/**
 * WGSL for texel c of a head starting at element `src` of the row-major array `array`, and the
 * helper function it needs: unaligned heads gather their texel element by element, zero past
 * the head's end.
 */
function headTexel(s: Shape, array: string): { texel: string; helper: string } {
  if (s.hs % 4 === 0) return { texel: `${array}[src / 4u + c]`, helper: "" };
  return {
    texel: `vec4f(${range(4).map((e) => `element(src, 4u * c + ${e}u)`).join(", ")})`,
    helper: `
fn element(src: u32, d: u32) -> f32 {
  return select(0.0, ${array}[src + min(d, ${s.hs - 1}u)], d < ${s.hs}u);
}`,
  };
}

/** qkv [B·T, 3C] → packed rows [q heads | k heads | v heads], q scaled by 1/√hs. */
function packQkvWgsl(s: Shape, packed: PackedRows, index: string): string {
  const headTexels = s.H * s.hs4;
  const { texel, helper: element } = headTexel(s, "qkv");
  return `
@group(0) @binding(0) var<storage, read> qkv: array<${elementType(s)}>;
${packed.declare("packed", 1, "write")}${element}
@compute @workgroup_size(${PACK_WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let index = ${index};
  if (index >= ${s.B * s.T * packed.width}u) { return; }
  let row = index / ${packed.width}u;
  let col = index % ${packed.width}u;
  let part = col / ${headTexels}u;
  let head = col % ${headTexels}u / ${s.hs4}u;
  let c = col % ${s.hs4}u;
  let src = row * ${3 * s.C}u + part * ${s.C}u + head * ${s.hs}u;
  let scale = select(1.0, ${1 / Math.sqrt(s.hs)}, part == 0u);
  ${packed.store("packed", "row", "col", `${texel} * scale`)}
}`;
}

/**
 * One of q [B·T, H·hs], k or v [B·T, KV·hs] → its `heads` heads in the packed rows, from texel
 * column `firstTexel`; q (`scale`d) times 1/√hs.
 */
function packHeadsWgsl(
  s: Shape,
  packed: PackedRows,
  part: { heads: number; firstTexel: number; scale: boolean },
  index: string,
): string {
  const width = part.heads * s.hs4;
  const { texel, helper } = headTexel(s, "x");
  const value = part.scale ? `${texel} * ${1 / Math.sqrt(s.hs)}` : texel;
  return `
@group(0) @binding(0) var<storage, read> x: array<${elementType(s)}>;
${packed.declare("packed", 1, "write")}${helper}
@compute @workgroup_size(${PACK_WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let index = ${index};
  if (index >= ${s.B * s.T * width}u) { return; }
  let row = index / ${width}u;
  let col = index % ${width}u;
  let head = col / ${s.hs4}u;
  let c = col % ${s.hs4}u;
  let src = row * ${part.heads * s.hs}u + head * ${s.hs}u;
  ${packed.store("packed", "row", `${part.firstTexel}u + col`, value)}
}`;
}

/** One invocation per R query rows; streams keys 0..last row in blocks (online softmax). */
function forwardWgsl(s: Shape, qkv: PackedRows, tiling: Tiling): string {
  const { rows: R, block: KB } = tiling;
  const rs = range(R), us = range(KB), cs = range(s.hs4);
  const q = (r: number) => (c: number) => `q${r}_${c}`;
  const k = (u: number) => (c: number) => `k${u}_${c}`;
  const lines: string[] = [];
  for (const r of rs) {
    lines.push(`  let i${r} = min(first + ${r}u, last);`);
    lines.push(...indent(1, texelLets(s, qkv, "qkv", `q${r}`, `seq + i${r}`, "qCol")));
    for (const c of cs) lines.push(`  var o${r}_${c} = vec4f(0.0);`);
    lines.push(`  var m${r} = ${MASKED};`, `  var l${r} = 0.0;`);
  }
  lines.push(`  for (var j = 0u; j <= last; j += ${KB}u) {`);
  // One key's vectors live at a time: its scores against every row, then the next key.
  for (const u of us) {
    lines.push(`    let key${u} = seq + min(j + ${u}u, last);`);
    lines.push(...indent(2, texelLets(s, qkv, "qkv", `k${u}`, `key${u}`, "kCol")));
    for (const r of rs) {
      lines.push(
        `    let s${r}_${u} = select(${MASKED}, ${dotSum(q(r), k(u), s.hs4)}, j + ${u}u <= i${r});`,
      );
    }
  }
  for (const r of rs) {
    const blockMax = us.map((u) => `s${r}_${u}`).reduce((a, b) => `max(${a}, ${b})`);
    lines.push(`    let max${r} = max(m${r}, ${blockMax});`);
    lines.push(`    let rescale${r} = exp(m${r} - max${r});`);
    lines.push(`    m${r} = max${r};`);
    // Key 0 is in the first block and visible to every row, so max is real from then on and
    // masked scores give exp(MASKED − max) = 0.
    for (const u of us) lines.push(`    let p${r}_${u} = exp(s${r}_${u} - max${r});`);
    lines.push(`    l${r} = l${r} * rescale${r} + ${us.map((u) => `p${r}_${u}`).join(" + ")};`);
    for (const c of cs) lines.push(`    o${r}_${c} = o${r}_${c} * rescale${r};`);
  }
  for (const u of us) {
    for (const c of cs) {
      lines.push(`    let v${u}_${c} = ${qkv.load("qkv", `key${u}`, `vCol + ${c}u`)};`);
      for (const r of rs) {
        lines.push(`    o${r}_${c} = fma(vec4f(p${r}_${u}), v${u}_${c}, o${r}_${c});`);
      }
    }
  }
  lines.push(`  }`);
  lines.push(...ownedRowStores(s, R, (r) => [
    `let row = seq + first + ${r}u;`,
    ...writeHead(
      s,
      "out",
      `row * ${s.C}u + head * ${s.hs}u`,
      (c) => `o${r}_${c}`,
      `(1.0 / l${r})`,
      false,
    ),
    `lse[row * ${s.H}u + head] = m${r} + log(l${r});`,
  ]));
  return rowTileKernel(s, R, "queries", [
    qkv.declare("qkv", 0, "read"),
    `@group(0) @binding(1) var<storage, read_write> out: array<${elementType(s)}>;`,
    "@group(0) @binding(2) var<storage, read_write> lse: array<f32>;",
  ], lines);
}

/**
 * dO [B·T, C] → packed rows [dO heads | one (lse, D) texel per head], D = Σ_d dO·O over the
 * head's columns. One invocation per (row, head).
 */
function packGradWgsl(s: Shape, grad: PackedRows, index: string): string {
  const cs = range(s.hs4);
  const body = cs.map((c) =>
    `  let g${c} = ${loadHead(s, "dout", "start", c)};\n` +
    `  ${grad.store("grad", "row", `head * ${s.hs4}u + ${c}u`, `g${c}`)}`
  );
  const d = dotSum((c) => `g${c}`, (c) => loadHead(s, "out", "start", c), s.hs4);
  return `
@group(0) @binding(0) var<storage, read> dout: array<${elementType(s)}>;
@group(0) @binding(1) var<storage, read> out: array<${elementType(s)}>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
${grad.declare("grad", 3, "write")}
${HSUM}
@compute @workgroup_size(${PACK_WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let index = ${index};
  if (index >= ${s.B * s.T * s.H}u) { return; }
  let row = index / ${s.H}u;
  let head = index % ${s.H}u;
  let start = row * ${s.C}u + head * ${s.hs}u;
${body.join("\n")}
  ${grad.store("grad", "row", `${s.H * s.hs4}u + head`, `vec4f(lse[index], ${d}, 0.0, 0.0)`)}
}`;
}

/** One invocation per R query rows: dq_i = Σ_{j ≤ i} dS_ij·k_j/√hs, keys in order. */
function gradQueryWgsl(
  s: Shape,
  qkv: PackedRows,
  grad: PackedRows,
  tiling: Tiling,
  dq: GradOutput,
): string {
  const { rows: R, block: KB } = tiling;
  const rs = range(R), us = range(KB), cs = range(s.hs4);
  const lines: string[] = [];
  for (const r of rs) {
    lines.push(`  let i${r} = min(first + ${r}u, last);`);
    lines.push(...indent(1, queryRowLets(s, qkv, grad, r, `seq + i${r}`)));
    for (const c of cs) lines.push(`  var dq${r}_${c} = vec4f(0.0);`);
  }
  lines.push(`  for (var j = 0u; j <= last; j += ${KB}u) {`);
  for (const u of us) {
    lines.push(`    let key${u} = seq + min(j + ${u}u, last);`);
    lines.push(...indent(2, keyRowLets(s, qkv, u, `key${u}`)));
    for (const r of rs) {
      lines.push(...indent(2, scoreGradLets(s, r, u, `${r}_${u}`, `j + ${u}u <= i${r}`)));
      for (const c of cs) {
        lines.push(`    dq${r}_${c} = fma(vec4f(ds${r}_${u}), k${u}_${c}, dq${r}_${c});`);
      }
    }
  }
  lines.push(`  }`);
  const offset = dq.offset === 0 ? "" : ` + ${dq.offset}u`;
  lines.push(...ownedRowStores(s, R, (r) =>
    writeHead(
      s,
      dq.name,
      `(seq + first + ${r}u) * ${dq.width}u + head * ${s.hs}u${offset}`,
      (c) => `dq${r}_${c}`,
      `${1 / Math.sqrt(s.hs)}`,
      dq.accumulate,
    )));
  return backwardKernel(s, qkv, grad, R, "queries", [dq.name], lines);
}

/**
 * One invocation per R key rows: dk_j = Σ_{i ≥ j} dS_ij·q_i/√hs and dv_j = Σ_{i ≥ j} P_ij·dO_i,
 * queries in order. In grouped attention the rows are a KV head's, and the sums also run over
 * the G query heads that read it, one after the other, in order: deterministic, no atomics.
 * Either output may be absent (its input needs no gradient); dk and dv share one row width.
 */
function gradKeyValueWgsl(
  s: Shape,
  qkv: PackedRows,
  grad: PackedRows,
  tiling: Tiling,
  dk: GradOutput | null,
  dv: GradOutput | null,
): string {
  const { rows: R, block: KB } = tiling;
  const rs = range(R), us = range(KB), cs = range(s.hs4);
  const G = s.H / s.KV;
  const lines: string[] = [];
  for (const r of rs) {
    lines.push(`  let j${r} = min(first + ${r}u, ${s.T - 1}u);`);
    lines.push(...indent(1, keyRowLets(s, qkv, r, `seq + j${r}`)));
    if (dk) { for (const c of cs) lines.push(`  var dk${r}_${c} = vec4f(0.0);`); }
    if (dv) { for (const c of cs) lines.push(`  var dv${r}_${c} = vec4f(0.0);`); }
  }
  const loop = [`  for (var i = first; i < ${s.T}u; i += ${KB}u) {`];
  for (const u of us) {
    loop.push(`    let query${u} = seq + min(i + ${u}u, ${s.T - 1}u);`);
    loop.push(...indent(2, queryRowLets(s, qkv, grad, u, `query${u}`)));
    for (const r of rs) {
      const visible = `i + ${u}u >= j${r} && i + ${u}u < ${s.T}u`;
      loop.push(...indent(2, scoreGradLets(s, u, r, `${r}_${u}`, visible)));
      if (dv) {
        for (const c of cs) {
          loop.push(`    dv${r}_${c} = fma(vec4f(p${r}_${u}), g${u}_${c}, dv${r}_${c});`);
        }
      }
      if (dk) {
        for (const c of cs) {
          loop.push(`    dk${r}_${c} = fma(vec4f(ds${r}_${u}), q${u}_${c}, dk${r}_${c});`);
        }
      }
    }
  }
  loop.push(`  }`);
  if (G === 1) lines.push(...loop);
  else {
    lines.push(
      `  for (var member = 0u; member < ${G}u; member++) {`,
      `    let qHead = head * ${G}u + member;`,
      `    let qCol = qHead * ${s.hs4}u;`,
      "    let gCol = qCol;",
      `    let statsCol = ${s.H * s.hs4}u + qHead;`,
      ...indent(1, loop),
      "  }",
    );
  }
  const outputs = [["dk", dk], ["dv", dv]] as const;
  const width = (dk ?? dv)!.width;
  lines.push(...ownedRowStores(s, R, (r) => [
    `let row = (seq + first + ${r}u) * ${width}u + head * ${s.hs}u;`,
    ...outputs.flatMap(([name, out]) =>
      out
        ? writeHead(
          s,
          out.name,
          `row + ${out.offset}u`,
          (c) => `${name}${r}_${c}`,
          "1.0",
          out.accumulate,
        )
        : []
    ),
  ]));
  const names = [...new Set([dk?.name, dv?.name].filter((n) => n !== undefined))];
  return backwardKernel(s, qkv, grad, R, "keys", names, lines);
}

export interface AttentionOptions {
  /** Packed operands in textures or storage buffers; defaults to the engine's variant. */
  variant?: KernelVariant;
}

/** A gradient the backward kernels write: into `tensor`, laid out as `output` says. */
interface GradWrite {
  tensor: Tensor;
  output: GradOutput;
}

/** What backward writes for its context: dq, dk and dv, each absent when not wanted. */
type GradWrites = (ctx: BackwardContext) => {
  q: GradWrite | null;
  k: GradWrite | null;
  v: GradWrite | null;
};

/** Refuses shapes whose kernels would loop past lavapipe's limit or over the grid. */
function checkLimits(engine: Engine, s: Shape, what: string): void {
  const maxGroups = engine.limits.maxComputeWorkgroupsPerDimension;
  if (s.B > maxGroups || s.H > maxGroups) {
    throw new ShapeError(`${what}: B=${s.B} and heads=${s.H} must be at most ${maxGroups}`);
  }
  if (Math.ceil(s.T / 2) >= MAX_LOOP_ITERATIONS) {
    throw new ShapeError(`${what}: T=${s.T} exceeds the ${2 * MAX_LOOP_ITERATIONS} supported`);
  }
  // The key-owning backward kernel loops over the T/2 query blocks of each of G query heads.
  const G = s.H / s.KV;
  if (G > 1 && G * (Math.ceil(s.T / 2) + 1) >= MAX_LOOP_ITERATIONS) {
    throw new ShapeError(
      `${what}: T=${s.T} with ${G} query heads per KV head exceeds the ` +
        `${MAX_LOOP_ITERATIONS} loop steps lavapipe runs; use a shorter T`,
    );
  }
}

/** Causal multi-head self-attention: qkv [B, T, 3C] → out [B, T, C] with nHead heads. */
export function attention(
  tape: Tape,
  qkv: Tensor,
  nHead: number,
  opts: AttentionOptions = {},
): Tensor {
  const engine = tape.engine;
  if (qkv.dtype !== "f32" || qkv.shape.length !== 3 || qkv.shape[2] % 3 !== 0) {
    throw new ShapeError(`attention: qkv must be f32 [B, T, 3C], got ${qkv}`);
  }
  const [B, T, C3] = qkv.shape;
  const C = C3 / 3;
  if (!Number.isInteger(nHead) || nHead < 1 || C % nHead !== 0) {
    throw new ShapeError(`attention: C=${C} of ${qkv} is not divisible by nHead=${nHead}`);
  }
  const hs = C / nHead;
  const s: Shape = { B, T, C, H: nHead, KV: nHead, hs, hs4: Math.ceil(hs / 4) };
  checkLimits(engine, s, "attention");
  const variant = opts.variant ?? kernelVariant(engine);
  const label = `attention(${qkv.label})`;

  const packed = new PackedRows(tape, B * T, 3 * s.H * s.hs4, variant, `${label} packed qkv`);
  const packGrid = grid1d(B * T * packed.width, PACK_WORKGROUP);
  const pack = engine.kernel("attention_pack_qkv", packQkvWgsl(s, packed, packGrid.index), [
    "read",
    packed.binding("write"),
  ]);
  const packCommand = engine.dispatch(
    "attention pack qkv",
    pack,
    [qkv, packed.resource],
    packGrid.workgroups,
  );
  return recordAttention(tape, s, label, [qkv], packed, [packCommand], (ctx) => {
    const dqkv = ctx.gradInput(0);
    if (!dqkv) return { q: null, k: null, v: null };
    const at = (offset: number): GradWrite => ({
      tensor: dqkv.tensor,
      output: { name: "dqkv", width: 3 * C, offset, accumulate: dqkv.accumulate },
    });
    return { q: at(0), k: at(C), v: at(2 * C) };
  });
}

/**
 * Causal grouped-query self-attention (Llama, Qwen2): q [B, T, H·D], k and v [B, T, KV·D] →
 * out [B, T, H·D], query head h attending with key/value head h div (H/KV), as HF's repeat_kv
 * but without the copies. KV = H is multi-head attention, KV = 1 multi-query attention.
 */
export function groupedAttention(
  tape: Tape,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  heads: number,
  kvHeads: number,
  opts: AttentionOptions = {},
): Tensor {
  const engine = tape.engine;
  const what = "groupedAttention";
  for (const [name, t] of [["q", q], ["k", k], ["v", v]] as const) {
    if (t.dtype !== "f32" || t.shape.length !== 3) {
      throw new ShapeError(`${what}: ${name} must be f32 [B, T, heads·D], got ${t}`);
    }
  }
  const [B, T, C] = q.shape;
  if (![heads, kvHeads].every((n) => Number.isInteger(n) && n >= 1) || heads % kvHeads !== 0) {
    throw new ShapeError(
      `${what}: kvHeads=${kvHeads} must be a positive integer dividing heads=${heads}`,
    );
  }
  if (C % heads !== 0) {
    throw new ShapeError(`${what}: width ${C} of q ${q} is not divisible by heads=${heads}`);
  }
  const hs = C / heads;
  for (const [name, t] of [["k", k], ["v", v]] as const) {
    if (t.shape[0] !== B || t.shape[1] !== T || t.shape[2] !== kvHeads * hs) {
      throw new ShapeError(
        `${what}: ${name} ${t} must be [${B}, ${T}, ${kvHeads * hs}] (kvHeads=${kvHeads} heads ` +
          `of ${hs}) beside q ${q}`,
      );
    }
  }
  // dk and dv are written by one kernel: one tensor bound twice for writing is refused.
  if (sharesMemory(k, v)) {
    throw new ShapeError(`${what}: k ${k} and v ${v} share memory; pass separate tensors`);
  }
  const s: Shape = { B, T, C, H: heads, KV: kvHeads, hs, hs4: Math.ceil(hs / 4) };
  checkLimits(engine, s, what);
  const variant = opts.variant ?? kernelVariant(engine);
  const label = `attention(${q.label}, ${k.label}, ${v.label})`;

  const width = (heads + 2 * kvHeads) * s.hs4;
  const packed = new PackedRows(tape, B * T, width, variant, `${label} packed qkv`);
  const parts = [
    { tensor: q, heads, firstTexel: 0, scale: true },
    { tensor: k, heads: kvHeads, firstTexel: heads * s.hs4, scale: false },
    { tensor: v, heads: kvHeads, firstTexel: (heads + kvHeads) * s.hs4, scale: false },
  ];
  const pack = parts.map((part) => {
    const grid = grid1d(B * T * part.heads * s.hs4, PACK_WORKGROUP);
    const kernel = engine.kernel(
      "attention_pack_heads",
      packHeadsWgsl(s, packed, part, grid.index),
      ["read", packed.binding("write")],
    );
    return engine.dispatch(
      "attention pack heads",
      kernel,
      [part.tensor, packed.resource],
      grid.workgroups,
    );
  });
  return recordAttention(tape, s, label, [q, k, v], packed, pack, (ctx) => {
    const write = (i: number, name: string, heads: number): GradWrite | null => {
      const target = ctx.gradInput(i);
      if (!target) return null;
      const output = { name, width: heads * hs, offset: 0, accumulate: target.accumulate };
      return { tensor: target.tensor, output };
    };
    return { q: write(0, "dq", heads), k: write(1, "dk", kvHeads), v: write(2, "dv", kvHeads) };
  });
}

/**
 * Records an attention op whose operands `pack` writes into `packed`: the forward kernel, and a
 * backward that packs dO and writes dq (query-owning kernel) and dk, dv (key-owning kernel)
 * where `gradWrites` says.
 */
function recordAttention(
  tape: Tape,
  s: Shape,
  label: string,
  inputs: Tensor[],
  packed: PackedRows,
  pack: Command[],
  gradWrites: GradWrites,
): Tensor {
  const engine = tape.engine;
  const { B, T, C } = s;
  const variant = packed.variant;
  const out = tape.tensor([B, T, C], label);
  const lse = tape.tensor([B, T, s.H], `${label} lse`);
  const fwdTiling = forwardTiling(T);
  const forward = engine.kernel("attention_forward", forwardWgsl(s, packed, fwdTiling), [
    packed.binding("read"),
    "rw",
    "rw",
  ]);
  const rowGroups = (tiling: Tiling) => Math.ceil(T / (WORKGROUP * tiling.rows));

  tape.record({
    name: "attention",
    inputs,
    outputs: [out],
    forward: [
      ...pack,
      engine.dispatch("attention forward", forward, [packed.resource, out, lse], [
        rowGroups(fwdTiling),
        s.H,
        B,
      ]),
    ],
    backward: (ctx): Command[] => {
      const { q, k, v } = gradWrites(ctx);
      if (!q && !k && !v) return [];
      const grad = new PackedRows(tape, B * T, s.H * (s.hs4 + 1), variant, `${label} packed grad`);
      const gradGrid = grid1d(B * T * s.H, PACK_WORKGROUP);
      const packGrad = engine.kernel("attention_pack_grad", packGradWgsl(s, grad, gradGrid.index), [
        "read",
        "read",
        "read",
        grad.binding("write"),
      ]);
      const tiling = backwardTiling(T);
      const reads: BindingKind[] = [packed.binding("read"), grad.binding("read")];
      const commands: Command[] = [
        engine.dispatch("attention pack grad", packGrad, [
          ctx.gradOutput(0),
          out,
          lse,
          grad.resource,
        ], gradGrid.workgroups),
      ];
      if (q) {
        const gradQuery = engine.kernel(
          "attention_grad_query",
          gradQueryWgsl(s, packed, grad, tiling, q.output),
          [...reads, "rw"],
        );
        commands.push(engine.dispatch(
          "attention grad query",
          gradQuery,
          [packed.resource, grad.resource, q.tensor],
          [rowGroups(tiling), s.H, B],
        ));
      }
      if (k || v) {
        // One binding per output array (GPT-2's dk and dv are both in dqkv).
        const targets = new Map([k, v].filter((w) => w !== null).map((w) => [w.output.name, w]));
        const gradKeyValue = engine.kernel(
          "attention_grad_key_value",
          gradKeyValueWgsl(s, packed, grad, tiling, k?.output ?? null, v?.output ?? null),
          [...reads, ...[...targets.keys()].map(() => "rw" as const)],
        );
        commands.push(engine.dispatch(
          "attention grad key value",
          gradKeyValue,
          [packed.resource, grad.resource, ...[...targets.values()].map((w) => w.tensor)],
          [rowGroups(tiling), s.KV, B],
        ));
      }
      return commands;
    },
  });
  return out;
}
