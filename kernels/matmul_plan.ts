// Planning a matrix product C = op(A)·op(B) (+ bias) for the kernels (kernels/matmul.ts): the
// product's description, batches folded into bigger products where the layout allows, then cut
// into blocks, one dispatch each, that respect the adapter's limits (128 MiB per binding, 16,384
// texels per texture side for the texture kernels): along M, N and K where a binding or a
// texture would be too large, with every view starting at an aligned offset, and along the
// batch into groups that fit.
import type { Engine } from "../engine/device.ts";
import { LimitError, ShapeError } from "../engine/errors.ts";
import type { Tensor } from "../engine/tensor.ts";
import { alignedChunks, lcm, type Range, rowGranule, vec4Granule } from "./chunks.ts";

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

/** Whether a block operand (or output) can be accessed as vec4: every row starts 4-aligned. */
export function isVec4Layout(op: { ld: number; batchStride: number }): boolean {
  return op.ld % 4 === 0 && op.batchStride % 4 === 0;
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

/**
 * The blocks computing `product` with a kernel family of `limits`, bindings holding at most
 * `maxBindingBytes`, in the order their dispatches must run.
 */
export function planProduct(
  engine: Engine,
  product: Product,
  limits: VariantLimits,
  maxBindingBytes: number,
): Block[] {
  checkProduct(product);
  return planBlocks(engine, fold(product), limits, maxBindingBytes);
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
  const chunks = (dim: "M" | "N" | "K", max: number) => {
    const lengths = rowLengths[dim];
    const fitting = Math.min(max, ...lengths.map((length) => Math.floor(maxElements / length)));
    const columnGranule = alongColumns[dim] ? vec4Granule(align) : 4;
    const granule = lengths.map((length) => rowGranule(align, length)).reduce(lcm, columnGranule);
    return alignedChunks(p[dim], fitting, granule, `${p.label} ${dim}`, true);
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
  const granule = perBatch.map((size) => rowGranule(align, size)).reduce(lcm, 1);
  if (matricesSplit) {
    if (granule !== 1) {
      throw new LimitError(
        `${p.label}: batch matrices need splitting but do not start at aligned offsets ` +
          `(${perBatch.join(", ")} elements each)`,
      );
    }
    return alignedChunks(p.batch, 1, 1, p.label, true);
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
  return alignedChunks(p.batch, max, granule, `${p.label} batch`, true);
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
