// A tensor is a shaped, typed window onto a GPU buffer. It owns its buffer (returned to the pool
// on `dispose`) unless it is a view of another tensor. Gradients live beside it in `grad`.
import type { BufferPool } from "./buffers.ts";
import { ShapeError } from "./errors.ts";

export type DType = "f32" | "u32";

export function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function checkShape(shape: readonly number[], what: string): void {
  if (shape.length === 0 || shape.some((d) => !Number.isInteger(d) || d < 1)) {
    throw new ShapeError(`${what}: shape [${shape}] must be a non-empty list of positive integers`);
  }
}

/**
 * Whether two tensors overlap in memory (a tensor and its views do): their gradients are then
 * one tensor, which a kernel must not bind twice for writing. Decided by the bytes: views of
 * disjoint parts of one buffer do not overlap.
 */
export function sharesMemory(a: Tensor, b: Tensor): boolean {
  return a.buffer === b.buffer && a.offset < b.offset + b.byteLength &&
    b.offset < a.offset + a.byteLength;
}

export class Tensor {
  /** Leaf tensors the optimiser updates set this; ops propagate it to their outputs. */
  requiresGrad = false;
  /** Gradient of a leaf tensor, accumulated by backward passes (zeroing is explicit). */
  grad?: Tensor;
  #disposed = false;

  constructor(
    readonly shape: readonly number[],
    readonly dtype: DType,
    readonly buffer: GPUBuffer,
    /** Byte offset of element 0 inside `buffer`. */
    readonly offset: number,
    readonly label: string,
    private readonly pool: BufferPool | null,
    /** The tensor a view looks into: disposing it kills the view too. */
    readonly base: Tensor | null = null,
  ) {}

  get size(): number {
    return sizeOf(this.shape);
  }

  get byteLength(): number {
    return this.size * 4;
  }

  get disposed(): boolean {
    return this.#disposed || (this.base?.disposed ?? false);
  }

  /** A binding of exactly this tensor's bytes. */
  get binding(): GPUBufferBinding {
    this.assertLive();
    return { buffer: this.buffer, offset: this.offset, size: this.byteLength };
  }

  assertLive(): void {
    if (this.disposed) throw new Error(`tensor "${this.label}" used after dispose`);
  }

  /** Returns the buffer to the pool (owners) and frees the gradient. Views only mark themselves. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.pool?.release(this.buffer);
    this.grad?.dispose();
    this.grad = undefined;
  }

  toString(): string {
    return `${this.label}[${this.shape.join("×")}]${this.dtype === "f32" ? "" : ":" + this.dtype}`;
  }
}
