// Cutting tensors into pieces a kernel can bind. A storage binding holds at most
// maxStorageBufferBindingSize bytes (128 MiB on most adapters; GPT-2's wte and logits are
// larger), and a view of a buffer must start at a byte offset that is a multiple of
// minStorageBufferOffsetAlignment. So a tensor over the limit is processed in chunks of rows
// whose starts keep every view aligned: the fewest rows that span a whole multiple of the
// alignment (the row granule) is the step chunk starts move by.
import type { Engine } from "../engine/device.ts";
import { LimitError } from "../engine/errors.ts";
import type { Tensor } from "../engine/tensor.ts";

export function gcd(x: number, y: number): number {
  return y === 0 ? x : gcd(y, x % y);
}

export function lcm(x: number, y: number): number {
  return (x / gcd(x, y)) * y;
}

/** The smallest multiple of `multiple` that is at least n. */
export function roundUp(n: number, multiple: number): number {
  return Math.ceil(n / multiple) * multiple;
}

/** The largest multiple of `multiple` that is at most n. */
export function roundDown(n: number, multiple: number): number {
  return Math.floor(n / multiple) * multiple;
}

/** The f32 elements per minStorageBufferOffsetAlignment: a view starts at a multiple of it. */
export function viewAlignment(engine: Engine): number {
  return engine.limits.minStorageBufferOffsetAlignment / 4;
}

/**
 * The fewest rows of `rowLength` f32 elements spanning a whole multiple of `align` bytes: a view
 * starting at a multiple of this many rows starts at a bindable offset.
 */
export function rowGranule(align: number, rowLength: number): number {
  return align / gcd(align, 4 * rowLength);
}

/**
 * The elements a chunk of a flat tensor starts at a multiple of: a bindable offset that is also
 * a whole vec4, so a vec4 kernel over every chunk but the last needs no scalar tail.
 */
export function vec4Granule(align: number): number {
  return lcm(4, rowGranule(align, 1));
}

/** Rows [start, end). */
export type Range = [start: number, end: number];

/**
 * Splits [0, total) into consecutive chunks of at most `max`, each starting at a multiple of
 * `granule`: the whole range when it fits; otherwise chunks of the largest multiple of `granule`
 * up to `max` and a shorter last one, or, `balanced`, as many chunks of nearly equal size (for
 * blocks that run side by side). `what` names the split in the error when no granule fits.
 */
export function alignedChunks(
  total: number,
  max: number,
  granule: number,
  what: string,
  balanced = false,
): Range[] {
  if (total <= max) return [[0, total]];
  const size = roundDown(max, granule);
  if (size === 0) {
    throw new LimitError(
      `${what}: cannot split ${total} into chunks of at most ${max} that start at multiples ` +
        `of ${granule} (the alignment a view needs)`,
    );
  }
  const step = balanced ? roundUp(Math.ceil(total / Math.ceil(total / size)), granule) : size;
  const chunks: Range[] = [];
  for (let start = 0; start < total; start += step) {
    chunks.push([start, Math.min(total, start + step)]);
  }
  return chunks;
}

/**
 * The row ranges of a [rows, cols] f32 tensor whose views each fit in `maxBytes` and start at an
 * offset `engine` can bind; one range when the whole tensor fits. Every range also starts at a
 * multiple of `quantum` rows, so that work over blocks of `quantum` rows (a kernel's partial
 * sums, or a second tensor's rows that must be viewed too) never straddles two ranges.
 */
export function rowChunks(
  engine: Engine,
  rows: number,
  cols: number,
  maxBytes: number,
  what: string,
  quantum = 1,
): Range[] {
  const granule = lcm(rowGranule(engine.limits.minStorageBufferOffsetAlignment, cols), quantum);
  return alignedChunks(rows, Math.floor(maxBytes / (4 * cols)), granule, what);
}

/** The elements of rows `range` of a tensor whose rows hold `cols` elements. */
export function rowElements([start, end]: Range, cols: number): Chunk {
  return { start: start * cols, count: (end - start) * cols };
}

/** A range of elements [start, start + count) of a tensor. */
export interface Chunk {
  start: number;
  count: number;
}

/**
 * Splits n elements into ranges that can each be bound (at most `maxBytes`, by default the
 * adapter's maxStorageBufferBindingSize) and viewed. Every range but the last holds a multiple
 * of 4 elements, so vec4 kernels apply whenever n is a multiple of 4. Usually one range: the
 * whole tensor.
 */
export function bindingChunks(
  engine: Engine,
  n: number,
  maxBytes = engine.limits.maxStorageBufferBindingSize,
): Chunk[] {
  const granule = vec4Granule(engine.limits.minStorageBufferOffsetAlignment);
  const max = roundDown(Math.floor(maxBytes / 4), granule);
  return alignedChunks(n, max, granule, `${n} elements in bindings of ${maxBytes} bytes`)
    .map(([start, end]) => ({ start, count: end - start }));
}

/** The tensor itself when `chunk` covers it, otherwise a view of the chunk. */
export function chunkView(engine: Engine, t: Tensor, chunk: Chunk): Tensor {
  if (chunk.start === 0 && chunk.count === t.size) return t;
  return engine.view(t, chunk.start, [chunk.count], `${t.label}[${chunk.start}:+${chunk.count}]`);
}
