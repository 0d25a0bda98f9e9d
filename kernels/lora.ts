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
// multiple of 4, masked scalar loads otherwise (awkward shapes). The tiles, and the fragments of
// generated code these kernels share with kernels/moe_mlp.ts, are in kernels/tile_codegen.ts.
import type { Command, Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { GradTarget, Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
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
  rankTile,
  RowTile,
  TILE_GROUPS,
  TILE_ROWS,
  WIDE_TILE,
  WORKGROUP,
  zeroRegisters,
} from "./tile_codegen.ts";

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
  const actLoad = (t: number) => act.load(`min(row0 + ${t}u, ${rows - 1}u)`, "k4");
  return `
${act.declaration()}
${w.declaration()}
${result.declaration()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${contractInvocations(rows, rank, 1)}u) { return; }
  let row0 = (id / ${tile.tiles}u) * ${CONTRACT_ROWS}u;
  let j0 = (id % ${tile.tiles}u) * ${4 * tile.groups}u;
  // acc_t_q[c] = Σ_k act[row0 + t, k] · W(k, j0 + 4q + c)
  ${zeroRegisters("acc", CONTRACT_ROWS, tile.groups, "  ")}
  ${contractLoop(k, rank, actLoad, w, weight, false)}
  ${contractStores(result, rows, scale, false)}
}`;
}

/**
 * out [N, W] = (base +) scale · small [N, r] · M, where M(j, w) is B[w, j] (`weight`
 * "wide-major", B is [W, r]) or A[j, w] ("rank-major", A is [r, W]). The epilogue either adds
 * the frozen layer's output (`base`, forward) or overwrites/accumulates (dx). An invocation
 * holds TILE_ROWS rows × TILE_GROUPS adjacent column groups (acc_t_g: row t, group g).
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
  const tile = new RowTile(rows, wide);
  const write = (t: number, g: number) => {
    const [row, col] = [`row0 + ${t}u`, `c0 + ${g}u`];
    const value = `${floatLiteral(scale)} * acc${t}${g}`;
    if (epilogue === "base") return result.store(row, col, `${base.load(row, col)} + ${value}`);
    return result.store(row, col, value, epilogue === "add");
  };
  return `
${small.declaration()}
${w.declaration()}
${result.declaration()}
${epilogue === "base" ? base.declaration() : ""}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  ${tile.start()}
  // acc_t_g[c] = Σ_j small[row0 + t, j] · M(j, 4·(c0 + g) + c)
  ${zeroRegisters("acc", TILE_ROWS, TILE_GROUPS, "  ")}
  ${expandLoop(tile, small, w, weight, { stacked: false, gated: false }, "  ")}
  ${tile.guardEach(write)}
}`;
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
  return `
${big.declaration()}
${small.declaration()}
${partial.declaration()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${outerInvocations(rows, wide, rank, 1)}u) { return; }
  let w0 = (id % ${wideTiles}u) * ${WIDE_TILE}u;
  let j0 = ((id / ${wideTiles}u) % ${tile.tiles}u) * ${4 * tile.groups}u;
  let b = id / ${wideTiles * tile.tiles}u;
  // acc_g_c_q = Σ_n big[n, 4·(w0 + g) + c] · small[n, j0 + 4q .. +3]
  ${outerZeros(rank)}
  for (var n = b * ${BLOCK_ROWS}u; n < min((b + 1u) * ${BLOCK_ROWS}u, ${rows}u); n++) {
    ${outerStep(small, "n", false, big.groups, (c4) => big.load("n", c4))}
  }
  ${outerStores(partial, layout, wide, rank, "b")}
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
  const contract = (
    label: string,
    k: number,
    weight: "rank-major" | "k-major",
    factor: number,
    resources: Tensor[],
  ) =>
    launch(
      engine,
      label,
      (index) => contractWgsl(rows, k, rank, weight, factor, index),
      contractInvocations(rows, rank, 1),
      resources,
      [2],
    );
  const expand = (
    label: string,
    wide: number,
    weight: "wide-major" | "rank-major",
    factor: number,
    epilogue: "base" | "store" | "add",
    resources: Tensor[],
  ) =>
    launch(
      engine,
      label,
      (index) => expandWgsl(rows, wide, rank, weight, factor, epilogue, index),
      new RowTile(rows, wide).invocations,
      resources,
      [2],
    );
  /** Partial sums of an outer product over row blocks, then their fixed-order sum into target. */
  const outer = (
    label: string,
    wide: number,
    layout: "rank-major" | "wide-major",
    big: Tensor,
    small: Tensor,
    sumScale: number,
    target: GradTarget,
  ): Command[] => {
    const shape = layout === "wide-major" ? [wide, rank] : [rank, wide];
    const partial = tape.tensor([Math.ceil(rows / BLOCK_ROWS), ...shape], `${label} partials`);
    return [
      launch(
        engine,
        `${label} partials`,
        (index) => outerWgsl(rows, wide, rank, layout, index),
        outerInvocations(rows, wide, rank, 1),
        [big, small, partial],
        [2],
      ),
      sumBlocks(engine, label, partial, sumScale, target.tensor, target.accumulate),
    ];
  };
  const forward = [
    contract("lora x·Aᵀ", inFeatures, "rank-major", 1, [x, a, u]),
    expand("lora base + s·u·Bᵀ", outFeatures, "wide-major", scale, "base", [u, b, y, base]),
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
      // dB [out, r] = s·Σ_n dy[n]ᵀ ⊗ u[n]
      if (db) commands.push(...outer("lora dB", outFeatures, "wide-major", dy, u, scale, db));
      if (!da && !dx) return commands;
      // du [N, r] = s·dy·B
      const du = tape.tensor([rows, rank], `lora du(${x.label})`);
      commands.push(contract("lora du = s·dy·B", outFeatures, "k-major", scale, [dy, b, du]));
      // dA [r, in] = Σ_n du[n]ᵀ ⊗ x[n]
      if (da) commands.push(...outer("lora dA", inFeatures, "rank-major", x, du, 1, da));
      if (dx) {
        // dx [N, in] = du·A
        const epilogue = dx.accumulate ? "add" : "store";
        commands.push(
          expand("lora dx = du·A", inFeatures, "rank-major", 1, epilogue, [du, a, dx.tensor]),
        );
      }
      return commands;
    },
  });
  return y;
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
    [1],
  );
}
