// Matrix multiplication C = op(A)·op(B) (+ bias), op(X) = X or Xᵀ, optionally batched, with its
// backward dA = dC·op(B)ᵀ, dB = op(A)ᵀ·dC (summed over the batch when B is shared), dbias =
// column sums of dC. Every product, forward or backward, goes through `productCommands`, which
// splits it into blocks that respect the adapter's limits (128 MiB per binding, 16,384 texels per
// texture side) and hands them to one of two kernel families: `texture` (kernels/matmul_texture.ts,
// lavapipe's fast path) or `storage` (kernels/matmul_storage.ts, real GPUs).
import type { Command, Engine, KernelVariant } from "../engine/device.ts";
import { LimitError, ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { storageBlockCommands, storageLimits } from "./matmul_storage.ts";
import { textureBlocksCommands, textureLimits } from "./matmul_texture.ts";
import { sumRowsCommands } from "./sum.ts";

export interface MatmulOptions {
  /** a is stored [K, M] (per batch) and used transposed. */
  transA?: boolean;
  /** b is stored [N, K] and used transposed (e.g. a tied embedding as the output layer). */
  transB?: boolean;
  /** [N], added to every output row in the kernel's epilogue. */
  bias?: Tensor;
  /** Kernel family; the engine's choice by default. */
  variant?: KernelVariant;
  /** Split as if a binding could hold at most this many bytes (tests of the chunked path). */
  maxBindingBytes?: number;
}

/** op(X) of a matrix X stored row-major as [batch?, rows, cols]. */
export interface Operand {
  tensor: Tensor;
  rows: number;
  cols: number;
  trans: boolean;
  /** One matrix per batch entry; otherwise one matrix shared by all. */
  batched: boolean;
}

/**
 * out_z (+)= op(A_z)·op(B_z) (+ bias) for z < batch, op(A_z) being M×K and op(B_z) K×N; with
 * `reduceBatch`, out (+)= Σ_z op(A_z)·op(B_z) instead (the batch sum of a shared weight's gradient).
 */
export interface Product {
  label: string;
  a: Operand;
  b: Operand;
  batch: number;
  M: number;
  K: number;
  N: number;
  reduceBatch: boolean;
  out: Tensor;
  accumulate: boolean;
  bias: Tensor | null;
}

/**
 * An operand as one block reads it: a view starting at the block's first element, so kernels
 * depend only on the block's shape and blocks of equal shape share them.
 */
export interface BlockOperand {
  view: Tensor;
  /** Storage row length. */
  ld: number;
  /** Elements between batch matrices within the view (0 when shared). */
  batchStride: number;
  trans: boolean;
  batched: boolean;
}

/** One dispatch's share of a product: g batch entries (or batch terms when reducing). */
export interface Block {
  label: string;
  g: number;
  reduce: boolean;
  M: number;
  N: number;
  K: number;
  a: BlockOperand;
  b: BlockOperand;
  out: { view: Tensor; ld: number; batchStride: number };
  /** The bias slice for this block's columns, on the block that first writes them. */
  bias: Tensor | null;
  accumulate: boolean;
  /** Names of the operand pieces this block reads: equal keys, equal packed textures. */
  aKey: string;
  bKey: string;
}

/** How large a block one kernel family can take (beyond the binding limit). */
export interface VariantLimits {
  maxM: number;
  maxN: number;
  maxK: number;
  maxGroup(
    dims: {
      M: number;
      N: number;
      K: number;
      reduce: boolean;
      aBatched: boolean;
      bBatched: boolean;
    },
  ): number;
}

/** C = op(a)·op(b) (+ bias); a [.., M, K] (or [.., K, M]), b [K, N] (or [N, K]) or batched like a. */
export function matmul(tape: Tape, a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const engine = tape.engine;
  const transA = opts.transA ?? false, transB = opts.transB ?? false;
  const bias = opts.bias ?? null;
  const what = `matmul(${a}${transA ? "ᵀ" : ""}, ${b}${transB ? "ᵀ" : ""}${
    bias ? `, bias ${bias}` : ""
  })`;
  if ([a, b, bias].some((t) => t && t.dtype !== "f32")) throw new ShapeError(`${what}: needs f32`);
  if (a.shape.length < 2 || b.shape.length < 2) {
    throw new ShapeError(`${what}: a and b must be matrices (optionally batched)`);
  }
  const lead = a.shape.slice(0, -2);
  const [aRows, aCols] = a.shape.slice(-2);
  const [bRows, bCols] = b.shape.slice(-2);
  const [M, K] = transA ? [aCols, aRows] : [aRows, aCols];
  const [bK, N] = transB ? [bCols, bRows] : [bRows, bCols];
  if (bK !== K) throw new ShapeError(`${what}: inner dimensions differ (${K} and ${bK})`);
  const bBatched = b.shape.length > 2;
  if (bBatched && b.shape.slice(0, -2).join() !== lead.join()) {
    throw new ShapeError(`${what}: a batched b needs the batch dimensions of a`);
  }
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== N)) {
    throw new ShapeError(`${what}: bias must be [${N}]`);
  }
  const batch = lead.reduce((x, y) => x * y, 1);
  const variant = opts.variant ?? engine.variant;
  const maxBindingBytes = opts.maxBindingBytes ?? engine.limits.maxStorageBufferBindingSize;
  const run = (p: Product) => productCommands(engine, p, variant, maxBindingBytes);
  const A = (trans: boolean) => operand(a, trans, true);
  const B = (trans: boolean) => operand(b, trans, bBatched);
  const out = tape.tensor([...lead, M, N], `matmul(${a.label}, ${b.label})`);
  const fresh = { tensor: out, accumulate: false };
  tape.record({
    name: "matmul",
    inputs: bias ? [a, b, bias] : [a, b],
    outputs: [out],
    forward: run(product("matmul", A(transA), B(transB), batch, false, fresh, bias)),
    backward: (ctx) => {
      const dC = ctx.gradOutput(0);
      // Read as [.., M, N] whatever shape an upstream gradient was given in.
      const dOut = (trans: boolean): Operand => ({
        tensor: dC,
        rows: M,
        cols: N,
        trans,
        batched: true,
      });
      const commands: Command[] = [];
      const dA = ctx.gradInput(0);
      if (dA) {
        // dA = dC·op(B)ᵀ; an a stored [K, M] takes its transpose, op(B)·dCᵀ.
        const [left, right] = transA ? [B(transB), dOut(true)] : [dOut(false), B(!transB)];
        commands.push(...run(product("matmul dA", left, right, batch, false, dA, null)));
      }
      const dB = ctx.gradInput(1);
      if (dB) {
        // dB = op(A)ᵀ·dC, summed over the batch when b is shared; a b stored [N, K] takes
        // its transpose, dCᵀ·op(A).
        const [left, right] = transB ? [dOut(true), A(transA)] : [A(!transA), dOut(false)];
        commands.push(...run(product("matmul dB", left, right, batch, !bBatched, dB, null)));
      }
      const dBias = bias ? ctx.gradInput(2) : null;
      if (dBias) {
        commands.push(...sumRowsCommands(tape, dC, batch * M, N, dBias, {
          label: "matmul dbias",
          maxBindingBytes,
        }));
      }
      return commands;
    },
  });
  return out;
}

/** The last two dimensions of `tensor` as a (possibly transposed) matrix operand. */
function operand(tensor: Tensor, trans: boolean, batched: boolean): Operand {
  const [rows, cols] = tensor.shape.slice(-2);
  return { tensor, rows, cols, trans, batched };
}

/** The product of two operands into `target`, its M, K and N read off the operands. */
export function product(
  label: string,
  a: Operand,
  b: Operand,
  batch: number,
  reduceBatch: boolean,
  target: { tensor: Tensor; accumulate: boolean },
  bias: Tensor | null,
): Product {
  const [M, K] = a.trans ? [a.cols, a.rows] : [a.rows, a.cols];
  const N = b.trans ? b.rows : b.cols;
  const { tensor: out, accumulate } = target;
  return { label, a, b, batch, M, K, N, reduceBatch, out, accumulate, bias };
}

/** The commands computing one product with the given kernel family. */
export function productCommands(
  engine: Engine,
  product: Product,
  variant: KernelVariant,
  maxBindingBytes = engine.limits.maxStorageBufferBindingSize,
): Command[] {
  checkProduct(product);
  const texture = variant === "texture";
  const limits = texture ? textureLimits(engine.limits.maxTextureDimension2D) : storageLimits();
  const blocks = planBlocks(engine, fold(product), limits, maxBindingBytes);
  return texture
    ? textureBlocksCommands(engine, blocks)
    : blocks.flatMap((block) => storageBlockCommands(engine, block));
}

function checkProduct(p: Product): void {
  const dims = (op: Operand) => op.trans ? [op.cols, op.rows] : [op.rows, op.cols];
  const batches = (op: Operand) => op.batched ? p.batch : 1;
  const [aM, aK] = dims(p.a), [bK, bN] = dims(p.b);
  const outSize = (p.reduceBatch ? 1 : p.batch) * p.M * p.N;
  if (
    aM !== p.M || aK !== p.K || bK !== p.K || bN !== p.N ||
    p.a.tensor.size !== batches(p.a) * p.a.rows * p.a.cols ||
    p.b.tensor.size !== batches(p.b) * p.b.rows * p.b.cols ||
    p.out.size !== outSize || (p.bias && p.bias.size !== p.N)
  ) {
    throw new ShapeError(
      `${p.label}: inconsistent product ${p.a.tensor}·${p.b.tensor} → ${p.out} ` +
        `(M ${p.M}, K ${p.K}, N ${p.N}, batch ${p.batch})`,
    );
  }
}

/** Turns batches into one bigger matrix product where the memory layout allows it. */
function fold(p: Product): Product {
  if (p.batch === 1) return { ...p, reduceBatch: false };
  const stack = (op: Operand): Operand => ({ ...op, rows: op.rows * p.batch, batched: false });
  // The rows of an untransposed batched A against a shared B: one tall product.
  if (!p.reduceBatch && p.a.batched && !p.a.trans && !p.b.batched) {
    return { ...p, a: stack(p.a), M: p.M * p.batch, batch: 1 };
  }
  // A batch sum where both operands run along K in storage rows: one product over batch·K.
  if (p.reduceBatch && p.a.batched && p.b.batched && p.a.trans && !p.b.trans) {
    return { ...p, a: stack(p.a), b: stack(p.b), K: p.K * p.batch, batch: 1, reduceBatch: false };
  }
  return p;
}

function gcd(x: number, y: number): number {
  return y === 0 ? x : gcd(y, x % y);
}

function lcm(x: number, y: number): number {
  return (x / gcd(x, y)) * y;
}

type Range = [start: number, end: number];

/** Splits [0, total) into balanced chunks of at most `max`, starting at multiples of `granule`. */
function split(total: number, max: number, granule: number, what: string): Range[] {
  if (total <= max) return [[0, total]];
  const size = Math.floor(max / granule) * granule;
  if (size === 0) {
    throw new LimitError(`${what}: cannot split into aligned chunks of at most ${max}`);
  }
  const count = Math.ceil(total / size);
  const even = Math.ceil(Math.ceil(total / count) / granule) * granule;
  const chunks: Range[] = [];
  for (let start = 0; start < total; start += even) {
    chunks.push([start, Math.min(total, start + even)]);
  }
  return chunks;
}

/**
 * Cuts a product into blocks: along M, N and K where a binding or texture would be too large
 * (chunk starts keep every view's byte offset aligned), and along the batch into groups that fit.
 */
function planBlocks(
  engine: Engine,
  p: Product,
  limits: VariantLimits,
  maxBindingBytes: number,
): Block[] {
  const align = engine.limits.minStorageBufferOffsetAlignment;
  const maxElements = Math.floor(maxBindingBytes / 4);
  const { a, b } = p;
  // For each dimension, the row lengths of the stored matrices whose rows it runs along, and
  // whether it runs along the columns of any (the output's and the bias's for N).
  const rowLengths = {
    M: [p.N, ...(a.trans ? [] : [a.cols])],
    N: b.trans ? [b.cols] : [],
    K: [...(a.trans ? [a.cols] : []), ...(b.trans ? [] : [b.cols])],
  };
  const alongColumns = { M: a.trans, N: true, K: !a.trans || b.trans };
  // A view starts at its chunk's first row and column: both must keep its byte offset aligned.
  const rowGranule = (length: number) => align / gcd(align, 4 * length);
  const chunks = (dim: "M" | "N" | "K", max: number) => {
    const lengths = rowLengths[dim];
    const fitting = Math.min(max, ...lengths.map((length) => Math.floor(maxElements / length)));
    const columnGranule = alongColumns[dim] ? lcm(4, align / 4) : 4;
    const granule = lengths.map(rowGranule).reduce(lcm, columnGranule);
    return split(p[dim], fitting, granule, `${p.label} ${dim}`);
  };
  const mChunks = chunks("M", limits.maxM);
  const nChunks = chunks("N", limits.maxN);
  const kChunks = chunks("K", limits.maxK);
  const split3 = mChunks.length * nChunks.length * kChunks.length > 1;
  const groups = batchGroups(p, limits, maxElements, split3, align);
  const order = blockOrder(mChunks, nChunks, kChunks);
  const blocks: Block[] = [];
  groups.forEach(([z0, z1], gi) => {
    const g = z1 - z0;
    for (const [mi, ni, ki] of order) {
      const [m0, m1] = mChunks[mi], [n0, n1] = nChunks[ni], [k0, k1] = kChunks[ki];
      const first = ki === 0 && (!p.reduceBatch || gi === 0);
      const outBatches = p.reduceBatch ? 1 : g;
      blocks.push({
        label: p.label,
        g,
        reduce: p.reduceBatch,
        M: m1 - m0,
        N: n1 - n0,
        K: k1 - k0,
        a: blockOperand(engine, a, z0, g, a.trans ? [[k0, k1], [m0, m1]] : [[m0, m1], [k0, k1]]),
        b: blockOperand(engine, b, z0, g, b.trans ? [[n0, n1], [k0, k1]] : [[k0, k1], [n0, n1]]),
        out: {
          view: blockView(engine, p.out, p.reduceBatch ? 0 : z0, outBatches, p.M, p.N, [m0, m1], [
            n0,
            n1,
          ]),
          ld: p.N,
          batchStride: p.reduceBatch ? 0 : p.M * p.N,
        },
        bias: p.bias && first ? viewOf(engine, p.bias, n0, n1 - n0) : null,
        accumulate: first ? p.accumulate : true,
        aKey: `${gi} ${mi} ${ki}`,
        bKey: `${gi} ${ki} ${ni}`,
      });
    }
  });
  return blocks;
}

/** Batch groups: as large as bindings and textures allow, one entry each when matrices are split. */
function batchGroups(
  p: Product,
  limits: VariantLimits,
  maxElements: number,
  matricesSplit: boolean,
  align: number,
): Range[] {
  if (p.batch === 1) return [[0, 1]];
  const perBatch = [
    ...[p.a, p.b].filter((op) => op.batched).map((op) => op.rows * op.cols),
    ...(p.reduceBatch ? [] : [p.M * p.N]),
  ];
  // Batch entries to skip so that every batched view's byte offset stays aligned.
  const granule = perBatch.map((size) => align / gcd(align, 4 * size)).reduce(lcm, 1);
  if (matricesSplit) {
    if (granule !== 1) {
      throw new LimitError(
        `${p.label}: batch matrices need splitting but do not start at aligned offsets ` +
          `(${perBatch.join(", ")} elements each)`,
      );
    }
    return split(p.batch, 1, 1, p.label);
  }
  const max = Math.min(
    limits.maxGroup({
      M: p.M,
      N: p.N,
      K: p.K,
      reduce: p.reduceBatch,
      aBatched: p.a.batched,
      bBatched: p.b.batched,
    }),
    ...perBatch.map((size) => Math.floor(maxElements / size)),
  );
  return split(p.batch, max, granule, `${p.label} batch`);
}

/**
 * The (m, n, k) chunk order that packs the least operand data: a texture keeps the A or B piece
 * it holds while consecutive blocks share it. k stays ascending for each output, as the
 * accumulation order must.
 */
function blockOrder(
  mChunks: Range[],
  nChunks: Range[],
  kChunks: Range[],
): [number, number, number][] {
  const size = ([s, e]: Range) => e - s;
  const loops = ["m", "n", "k"] as const;
  let best: [number, number, number][] = [];
  let bestCost = Infinity;
  for (const outer of loops) {
    for (const middle of loops) {
      if (middle === outer) continue;
      const inner = loops.find((l) => l !== outer && l !== middle)!;
      const counts = { m: mChunks.length, n: nChunks.length, k: kChunks.length };
      const order: [number, number, number][] = [];
      for (let i = 0; i < counts[outer]; i++) {
        for (let j = 0; j < counts[middle]; j++) {
          for (let l = 0; l < counts[inner]; l++) {
            const at = { [outer]: i, [middle]: j, [inner]: l } as Record<"m" | "n" | "k", number>;
            order.push([at.m, at.n, at.k]);
          }
        }
      }
      let cost = 0, lastA = "", lastB = "";
      for (const [m, n, k] of order) {
        if (`${m} ${k}` !== lastA) cost += size(mChunks[m]) * size(kChunks[k]);
        if (`${k} ${n}` !== lastB) cost += size(kChunks[k]) * size(nChunks[n]);
        [lastA, lastB] = [`${m} ${k}`, `${k} ${n}`];
      }
      if (cost < bestCost) [best, bestCost] = [order, cost];
    }
  }
  return best;
}

function viewOf(engine: Engine, tensor: Tensor, start: number, length: number): Tensor {
  if (start === 0 && length === tensor.size) return tensor;
  return engine.view(tensor, start, [length], `${tensor.label}[${start}:+${length}]`);
}

/**
 * The view of `count` consecutive [rows, cols] matrices from matrix z0 of `tensor`, starting at
 * element [r0][c0] of the first and ending at element [r1 − 1][c1 − 1] of the last.
 */
function blockView(
  engine: Engine,
  tensor: Tensor,
  z0: number,
  count: number,
  rows: number,
  cols: number,
  [r0, r1]: Range,
  [c0, c1]: Range,
): Tensor {
  const matrix = rows * cols;
  const start = z0 * matrix + r0 * cols + c0;
  const length = (count - 1) * matrix + (r1 - r0 - 1) * cols + (c1 - c0);
  return viewOf(engine, tensor, start, length);
}

/** An operand's view for batch entries [z0, z0 + g) and a range of storage rows and columns. */
function blockOperand(
  engine: Engine,
  op: Operand,
  z0: number,
  g: number,
  [rows, cols]: [Range, Range],
): BlockOperand {
  const first = op.batched ? z0 : 0, count = op.batched ? g : 1;
  return {
    view: blockView(engine, op.tensor, first, count, op.rows, op.cols, rows, cols),
    ld: op.cols,
    batchStride: op.batched ? op.rows * op.cols : 0,
    trans: op.trans,
    batched: op.batched,
  };
}
