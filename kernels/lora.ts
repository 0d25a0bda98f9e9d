// LoRA on a frozen linear layer, fused onto that layer's output (row-vector convention, PEFT
// shapes: A = lora_A [r, in], B = lora_B [out, r]):
//   u = x·Aᵀ [N, r] (saved),   y = base + s·u·Bᵀ [N, out]
// Backward (each gradient only when asked for, overwrite or accumulate):
//   dbase = dy,  dB = s·dyᵀ·u,  du = s·dy·B,  dA = duᵀ·x,  dx = du·A
// r is small (1..64), so these are skinny products with dedicated kernels of three shapes:
//   contract: [N, K]·(small weight) → [N, r], K = in or out, one K-long dot per output;
//   expand:   [N, r]·(small weight) → [N, W], r-long dots, fused with the base add;
//   outer:    Σ over rows of (big row) ⊗ (small row) → dA, dB, as partial sums over blocks of
//             BLOCK_ROWS rows, then a fixed-order sum over the blocks (deterministic, no atomics).
// Every matrix is read 4 consecutive columns at a time: vec4 loads when its row length is a
// multiple of 4, masked scalar loads otherwise (awkward shapes). What made these fast on lavapipe
// (measured, about 3× over a first version): hot loops free of bounds checks, accumulators as
// named registers written out by the generator rather than private arrays, and tiles that reuse
// each loaded vec4 several times (the sizes below won side-by-side runs at GPT-2's MLP shapes).
import type { Command, Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { grid1d } from "./grid.ts";

const WORKGROUP = 64;
/** Rows of the big operand each invocation of contract handles. */
const CONTRACT_ROWS = 8;
/** Rows × adjacent column groups (vec4s) each invocation of expand writes. */
const EXPAND_ROWS = 4;
const EXPAND_GROUPS = 2;
/** Column groups (vec4s of the wide dimension) each invocation of outer handles. */
const WIDE_TILE = 4;
/** Rows summed into one partial of dA and dB. */
const BLOCK_ROWS = 64;

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const XYZW = "xyzw";

/**
 * A matrix [rows, cols] bound as storage, read and written 4 consecutive columns at a time
 * (column group c4 = columns 4·c4 .. 4·c4+3). When cols is a multiple of 4 these are plain vec4
 * accesses with no checks (hot loops stay branch-free); otherwise helpers mask the columns past
 * the end (read as 0, never written).
 */
export class Matrix {
  readonly groups: number;
  constructor(
    readonly name: string,
    readonly binding: number,
    readonly cols: number,
    readonly access: "read" | "read_write",
  ) {
    this.groups = Math.ceil(cols / 4);
  }

  get aligned(): boolean {
    return this.cols % 4 === 0;
  }

  declaration(): string {
    const { name, cols } = this;
    const decl = `@group(0) @binding(${this.binding}) var<storage, ${this.access}> ${name}: ` +
      `array<${this.aligned ? "vec4f" : "f32"}>;`;
    if (this.aligned) return decl;
    const each = (body: string) =>
      `for (var i = 0u; i < 4u; i++) { let col = 4u * c4 + i; if (col < ${cols}u) { ${body} } }`;
    const load = `
fn ${name}_load(row: u32, c4: u32) -> vec4f {
  var v = vec4f(0.0);
  ${each(`v[i] = ${name}[row * ${cols}u + col];`)}
  return v;
}`;
    const write = `
fn ${name}_store(row: u32, c4: u32, v: vec4f) { ${each(`${name}[row * ${cols}u + col] = v[i];`)} }
fn ${name}_add(row: u32, c4: u32, v: vec4f) { ${each(`${name}[row * ${cols}u + col] += v[i];`)} }`;
    return decl + load + (this.access === "read" ? "" : write);
  }

  /** WGSL expression: the vec4 at (row, c4). */
  load(row: string, c4: string): string {
    return this.aligned
      ? `${this.name}[(${row}) * ${this.groups}u + ${c4}]`
      : `${this.name}_load(${row}, ${c4})`;
  }

  /** WGSL statement: writes (or with `add`, adds) the vec4 at (row, c4). */
  store(row: string, c4: string, value: string, add = false): string {
    if (!this.aligned) return `${this.name}_${add ? "add" : "store"}(${row}, ${c4}, ${value});`;
    const at = `${this.name}[(${row}) * ${this.groups}u + ${c4}]`;
    return `${at} = ${add ? `${at} + ` : ""}${value};`;
  }
}

/** A WGSL float literal for x (always with a point or exponent, so never an integer). */
export function floatLiteral(x: number): string {
  const text = String(x);
  return /[.e]/.test(text) ? text : `${text}.0`;
}

/** `index` clamped to `last` when it can pass it (written out only then). */
export function clamp(index: string, last: number, canPass: boolean): string {
  return canPass ? `min(${index}, ${last}u)` : index;
}

/**
 * Rank groups (vec4s of low-rank columns) one invocation accumulates: two when they tile the
 * rank's groups evenly, else one, so the hot loops never need a bounds check on the rank.
 */
export function rankTile(rank: number): { groups: number; tiles: number } {
  const total = Math.ceil(rank / 4);
  const groups = total % 2 === 0 ? 2 : 1;
  return { groups, tiles: total / groups };
}

/**
 * out [N, r] = scale · act [N, K] · W, where W(k, j) is A[j, k] (`weight` "rank-major", A is
 * [r, K]) or B[k, j] ("k-major", B is [K, r]). An invocation holds CONTRACT_ROWS rows × one rank
 * tile in registers (acc_t_q: row t, rank group q) and walks K four columns at a time.
 */
function contractWgsl(
  rows: number,
  k: number,
  rank: number,
  weight: "rank-major" | "k-major",
  scale: number,
  index: string,
): string {
  const tile = rankTile(rank);
  const act = new Matrix("act", 0, k, "read");
  const w = new Matrix("weight", 1, weight === "rank-major" ? k : rank, "read");
  const result = new Matrix("result", 2, rank, "read_write");
  const T = range(CONTRACT_ROWS), Q = range(tile.groups), C = range(4);
  const step = weight === "rank-major"
    ? Q.map((q) =>
      C.map((c) =>
        `let w${q}${c} = ${w.load(clamp(`j0 + ${4 * q + c}u`, rank - 1, rank % 4 !== 0), "k4")};`
      )
        .join("\n    ") +
      "\n    " +
      T.map((t) => `acc${t}${q} += vec4f(${C.map((c) => `dot(a${t}, w${q}${c})`).join(", ")});`)
        .join("\n    ")
    ).join("\n    ")
    : C.map((c) =>
      Q.map((q) =>
        `let w${c}${q} = ${
          w.load(clamp(`4u * k4 + ${c}u`, k - 1, k % 4 !== 0), `j0 / 4u + ${q}u`)
        };`
      )
        .join("\n    ") +
      "\n    " +
      T.map((t) => Q.map((q) => `acc${t}${q} += a${t}.${XYZW[c]} * w${c}${q};`).join(" "))
        .join("\n    ")
    ).join("\n    ");
  return `
${act.declaration()}
${w.declaration()}
${result.declaration()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${Math.ceil(rows / CONTRACT_ROWS) * tile.tiles}u) { return; }
  let row0 = (id / ${tile.tiles}u) * ${CONTRACT_ROWS}u;
  let j0 = (id % ${tile.tiles}u) * ${4 * tile.groups}u;
  // acc_t_q[c] = Σ_k act[row0 + t, k] · W(k, j0 + 4q + c)
  ${T.map((t) => Q.map((q) => `var acc${t}${q} = vec4f(0.0);`).join(" ")).join("\n  ")}
  for (var k4 = 0u; k4 < ${act.groups}u; k4++) {
    ${
    T.map((t) => `let a${t} = ${act.load(`min(row0 + ${t}u, ${rows - 1}u)`, "k4")};`).join("\n    ")
  }
    ${step}
  }
  ${
    T.map((t) =>
      `if (row0 + ${t}u < ${rows}u) { ${
        Q.map((q) =>
          result.store(`row0 + ${t}u`, `j0 / 4u + ${q}u`, `${floatLiteral(scale)} * acc${t}${q}`)
        ).join(" ")
      } }`
    ).join("\n  ")
  }
}`;
}

/**
 * out [N, W] = (base +) scale · small [N, r] · M, where M(j, w) is B[w, j] (`weight`
 * "wide-major", B is [W, r]) or A[j, w] ("rank-major", A is [r, W]). The epilogue either adds
 * the frozen layer's output (`base`, forward) or overwrites/accumulates (dx). An invocation
 * holds EXPAND_ROWS rows × EXPAND_GROUPS adjacent column groups (acc_t_g: row t, group g).
 */
function expandWgsl(
  rows: number,
  wide: number,
  rank: number,
  weight: "wide-major" | "rank-major",
  scale: number,
  epilogue: "base" | "store" | "add",
  index: string,
): string {
  const small = new Matrix("small", 0, rank, "read");
  const w = new Matrix("weight", 1, weight === "rank-major" ? wide : rank, "read");
  const result = new Matrix("result", 2, wide, "read_write");
  const base = new Matrix("base", 3, wide, "read");
  const T = range(EXPAND_ROWS), G = range(EXPAND_GROUPS), C = range(4);
  const colTiles = Math.ceil(result.groups / EXPAND_GROUPS);
  const ragged = result.groups % EXPAND_GROUPS !== 0;
  const group = (g: number) => clamp(`c0 + ${g}u`, result.groups - 1, ragged);
  const step = weight === "rank-major"
    ? G.map((g) =>
      C.map((c) =>
        `let w${g}${c} = ${w.load(clamp(`4u * q + ${c}u`, rank - 1, rank % 4 !== 0), group(g))};`
      ).join(" ") + "\n    " +
      T.map((t) => `acc${t}${g} += ${C.map((c) => `s${t}.${XYZW[c]} * w${g}${c}`).join(" + ")};`)
        .join("\n    ")
    ).join("\n    ")
    : G.map((g) =>
      C.map((c) =>
        `let w${g}${c} = ${
          w.load(clamp(`4u * (${group(g)}) + ${c}u`, wide - 1, wide % 4 !== 0), "q")
        };`
      ).join(" ") + "\n    " +
      T.map((t) => `acc${t}${g} += vec4f(${C.map((c) => `dot(s${t}, w${g}${c})`).join(", ")});`)
        .join("\n    ")
    ).join("\n    ");
  const write = (t: number, g: number) => {
    const [row, col] = [`row0 + ${t}u`, `c0 + ${g}u`];
    const value = `${floatLiteral(scale)} * acc${t}${g}`;
    if (epilogue === "base") return result.store(row, col, `${base.load(row, col)} + ${value}`);
    return result.store(row, col, value, epilogue === "add");
  };
  const inRange = (t: number, g: number) =>
    `row0 + ${t}u < ${rows}u${ragged ? ` && c0 + ${g}u < ${result.groups}u` : ""}`;
  return `
${small.declaration()}
${w.declaration()}
${result.declaration()}
${epilogue === "base" ? base.declaration() : ""}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${Math.ceil(rows / EXPAND_ROWS) * colTiles}u) { return; }
  let row0 = (id / ${colTiles}u) * ${EXPAND_ROWS}u;
  let c0 = (id % ${colTiles}u) * ${EXPAND_GROUPS}u;
  // acc_t_g[c] = Σ_j small[row0 + t, j] · M(j, 4·(c0 + g) + c)
  ${T.map((t) => G.map((g) => `var acc${t}${g} = vec4f(0.0);`).join(" ")).join("\n  ")}
  for (var q = 0u; q < ${small.groups}u; q++) {
    ${T.map((t) => `let s${t} = ${small.load(`min(row0 + ${t}u, ${rows - 1}u)`, "q")};`).join(" ")}
    ${step}
  }
  ${
    T.map((t) => G.map((g) => `if (${inRange(t, g)}) { ${write(t, g)} }`).join("\n  ")).join("\n  ")
  }
}`;
}

function expandInvocations(rows: number, wide: number): number {
  return Math.ceil(rows / EXPAND_ROWS) * Math.ceil(Math.ceil(wide / 4) / EXPAND_GROUPS);
}

/**
 * partial[b] = Σ_{n in block b} big[n, :] ⊗ small[n, :], laid out [r, W] ("rank-major", dA) or
 * [W, r] ("wide-major", dB) per block. An invocation holds WIDE_TILE column groups × one rank
 * tile (acc_g_c_q: wide column 4·(w0 + g) + c, rank group q).
 */
function outerWgsl(
  rows: number,
  wide: number,
  rank: number,
  layout: "rank-major" | "wide-major",
  index: string,
): string {
  const tile = rankTile(rank);
  const big = new Matrix("big", 0, wide, "read");
  const small = new Matrix("small", 1, rank, "read");
  const partial = new Matrix("partial", 2, layout === "wide-major" ? rank : wide, "read_write");
  const wideTiles = Math.ceil(big.groups / WIDE_TILE);
  const blocks = Math.ceil(rows / BLOCK_ROWS);
  const G = range(WIDE_TILE), C = range(4), Q = range(tile.groups);
  const acc = (g: number, c: number, q: number) => `acc${g}${c}${q}`;
  const store = layout === "wide-major"
    ? G.map((g) =>
      C.map((c) =>
        `if (4u * (w0 + ${g}u) + ${c}u < ${wide}u) { ${
          Q.map((q) =>
            partial.store(
              `b * ${wide}u + 4u * (w0 + ${g}u) + ${c}u`,
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
              `b * ${rank}u + j0 + ${4 * q + cj}u`,
              `w0 + ${g}u`,
              `vec4f(${C.map((c) => `${acc(g, c, q)}.${XYZW[cj]}`).join(", ")})`,
            )
          } }`
        ).join("\n  ")
      ).join("\n  ")
    ).join("\n  ");
  return `
${big.declaration()}
${small.declaration()}
${partial.declaration()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${blocks * tile.tiles * wideTiles}u) { return; }
  let w0 = (id % ${wideTiles}u) * ${WIDE_TILE}u;
  let j0 = ((id / ${wideTiles}u) % ${tile.tiles}u) * ${4 * tile.groups}u;
  let b = id / ${wideTiles * tile.tiles}u;
  // acc_g_c_q = Σ_n big[n, 4·(w0 + g) + c] · small[n, j0 + 4q .. +3]
  ${
    G.map((g) =>
      C.map((c) => Q.map((q) => `var ${acc(g, c, q)} = vec4f(0.0);`).join(" ")).join(" ")
    ).join("\n  ")
  }
  for (var n = b * ${BLOCK_ROWS}u; n < min((b + 1u) * ${BLOCK_ROWS}u, ${rows}u); n++) {
    ${Q.map((q) => `let s${q} = ${small.load("n", `j0 / 4u + ${q}u`)};`).join(" ")}
    ${
    G.map((g) =>
      `let g${g} = ${
        big.load("n", clamp(`w0 + ${g}u`, big.groups - 1, big.groups % WIDE_TILE !== 0))
      };
    ${
        C.map((c) => Q.map((q) => `${acc(g, c, q)} += g${g}.${XYZW[c]} * s${q};`).join(" ")).join(
          " ",
        )
      }`
    ).join("\n    ")
  }
  }
  ${store}
}`;
}

/** out (+)= scale · Σ_b partial[b] over `blocks` blocks of `size` values, in block order. */
function sumBlocksWgsl(
  size: number,
  blocks: number,
  scale: number,
  accumulate: boolean,
  index: string,
): string {
  const vec4 = size % 4 === 0;
  const type = vec4 ? "vec4f" : "f32";
  const n = vec4 ? size / 4 : size;
  return `
@group(0) @binding(0) var<storage, read> partial: array<${type}>;
@group(0) @binding(1) var<storage, read_write> result: array<${type}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${n}u) { return; }
  var sum = partial[i];${
    blocks > 1
      ? `
  for (var b = 1u; b < ${blocks}u; b++) { sum += partial[b * ${n}u + i]; }`
      : ""
  }
  result[i] = ${accumulate ? "result[i] + " : ""}${floatLiteral(scale)} * sum;
}`;
}

/** One dispatch of a generated kernel over `invocations` invocations. */
function launch(
  engine: Engine,
  label: string,
  wgsl: (index: string) => string,
  invocations: number,
  resources: readonly Tensor[],
  writable: number,
): Command {
  const grid = grid1d(invocations, WORKGROUP);
  const bindings = resources.map((_, i) => i === writable ? "rw" as const : "read" as const);
  const kernel = engine.kernel(label, wgsl(grid.index), bindings);
  return engine.dispatch(label, kernel, resources, grid.workgroups);
}

/** Shapes of one LoRA-adapted layer. */
interface LoraShape {
  rows: number;
  inFeatures: number;
  outFeatures: number;
  rank: number;
}

function checkShapes(x: Tensor, base: Tensor, a: Tensor, b: Tensor): LoraShape {
  const inFeatures = x.shape[x.shape.length - 1];
  const outFeatures = base.shape[base.shape.length - 1];
  const rank = a.shape[0];
  const rows = x.size / inFeatures;
  const leading = (t: Tensor) => t.shape.slice(0, -1).join(",");
  const ok = x.shape.length >= 2 && leading(x) === leading(base) &&
    a.shape.length === 2 && a.shape[1] === inFeatures &&
    b.shape.length === 2 && b.shape[0] === outFeatures && b.shape[1] === rank &&
    [x, base, a, b].every((t) => t.dtype === "f32");
  if (!ok) {
    throw new ShapeError(
      `loraLinear: x ${x} [..., in], base ${base} [..., out], A ${a} [r, in], B ${b} [out, r] ` +
        `do not fit together`,
    );
  }
  return { rows, inFeatures, outFeatures, rank };
}

/**
 * y = base + scale·(x·Aᵀ)·Bᵀ: a LoRA delta added onto the frozen layer's output `base`.
 * x [..., in], base [..., out], A [r, in], B [out, r]; y has base's shape.
 */
export function loraLinear(
  tape: Tape,
  x: Tensor,
  base: Tensor,
  a: Tensor,
  b: Tensor,
  scale: number,
): Tensor {
  const engine = tape.engine;
  const { rows, inFeatures, outFeatures, rank } = checkShapes(x, base, a, b);
  if (!Number.isFinite(scale)) throw new ShapeError(`loraLinear: scale ${scale} is not finite`);
  const u = tape.tensor([rows, rank], `lora u(${x.label})`);
  const y = tape.tensor(base.shape, `lora(${base.label})`);
  const rankTiles = rankTile(rank).tiles;
  const rowTiles = Math.ceil(rows / CONTRACT_ROWS);
  const forward = [
    launch(
      engine,
      "lora x·Aᵀ",
      (index) => contractWgsl(rows, inFeatures, rank, "rank-major", 1, index),
      rowTiles * rankTiles,
      [x, a, u],
      2,
    ),
    launch(
      engine,
      "lora base + s·u·Bᵀ",
      (index) => expandWgsl(rows, outFeatures, rank, "wide-major", scale, "base", index),
      expandInvocations(rows, outFeatures),
      [u, b, y, base],
      2,
    ),
  ];

  tape.record({
    name: "lora_linear",
    inputs: [x, base, a, b],
    outputs: [y],
    forward,
    backward: (ctx) => {
      const dy = ctx.gradOutput(0);
      const [dx, dbase, da, db] = [0, 1, 2, 3].map((i) => ctx.gradInput(i));
      const commands: Command[] = [];
      if (dbase) {
        commands.push(
          dbase.accumulate
            ? sumBlocks(engine, "lora dbase += dy", dy, 1, dbase.tensor, true)
            : { kind: "copy", label: "lora dbase = dy", src: dy, dst: dbase.tensor },
        );
      }
      if (db) {
        // dB [out, r] = s·Σ_n dy[n]ᵀ ⊗ u[n]
        const partial = tape.tensor([blocksOf(rows), outFeatures, rank], "lora dB partials");
        commands.push(
          launch(
            engine,
            "lora dB partials",
            (index) => outerWgsl(rows, outFeatures, rank, "wide-major", index),
            outerInvocations(rows, outFeatures, rank),
            [dy, u, partial],
            2,
          ),
          sumBlocks(engine, "lora dB", partial, scale, db.tensor, db.accumulate),
        );
      }
      if (!da && !dx) return commands;
      // du [N, r] = s·dy·B
      const du = tape.tensor([rows, rank], `lora du(${x.label})`);
      commands.push(launch(
        engine,
        "lora du = s·dy·B",
        (index) => contractWgsl(rows, outFeatures, rank, "k-major", scale, index),
        rowTiles * rankTiles,
        [dy, b, du],
        2,
      ));
      if (da) {
        // dA [r, in] = Σ_n du[n]ᵀ ⊗ x[n]
        const partial = tape.tensor([blocksOf(rows), rank, inFeatures], "lora dA partials");
        commands.push(
          launch(
            engine,
            "lora dA partials",
            (index) => outerWgsl(rows, inFeatures, rank, "rank-major", index),
            outerInvocations(rows, inFeatures, rank),
            [x, du, partial],
            2,
          ),
          sumBlocks(engine, "lora dA", partial, 1, da.tensor, da.accumulate),
        );
      }
      if (dx) {
        // dx [N, in] = du·A
        commands.push(launch(
          engine,
          "lora dx = du·A",
          (index) =>
            expandWgsl(
              rows,
              inFeatures,
              rank,
              "rank-major",
              1,
              dx.accumulate ? "add" : "store",
              index,
            ),
          expandInvocations(rows, inFeatures),
          [du, a, dx.tensor],
          2,
        ));
      }
      return commands;
    },
  });
  return y;
}

function blocksOf(rows: number): number {
  return Math.ceil(rows / BLOCK_ROWS);
}

function outerInvocations(rows: number, wide: number, rank: number): number {
  return blocksOf(rows) * rankTile(rank).tiles * Math.ceil(Math.ceil(wide / 4) / WIDE_TILE);
}

/** result (+)= scale · Σ over the leading blocks of `partial` (one block: a scaled copy/add). */
export function sumBlocks(
  engine: Engine,
  label: string,
  partial: Tensor,
  scale: number,
  result: Tensor,
  accumulate: boolean,
): Command {
  const blocks = partial.size / result.size;
  const vec4 = result.size % 4 === 0;
  return launch(
    engine,
    label,
    (index) => sumBlocksWgsl(result.size, blocks, scale, accumulate, index),
    vec4 ? result.size / 4 : result.size,
    [partial, result],
    1,
  );
}
