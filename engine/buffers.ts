// A pool of GPU storage buffers with explicit ownership: `acquire` hands a buffer out, `release`
// takes it back for reuse. Nothing is freed by the garbage collector; `destroy` frees it all.
import { LimitError } from "./errors.ts";

/** Every tensor buffer can be bound as storage and copied in both directions. */
export const TENSOR_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC |
  GPUBufferUsage.COPY_DST;

/** Buffer sizes are rounded up to this many bytes so that nearby sizes share a bucket. */
const SIZE_QUANTUM = 256;

export class BufferPool {
  #free = new Map<number, GPUBuffer[]>();
  #inUse = new Set<GPUBuffer>();
  #bytesAllocated = 0;
  #bytesInUse = 0;

  constructor(private readonly device: GPUDevice) {}

  /** Bytes of GPU memory this pool holds, in use or waiting for reuse. */
  get bytesAllocated(): number {
    return this.#bytesAllocated;
  }

  /** Bytes currently handed out. */
  get bytesInUse(): number {
    return this.#bytesInUse;
  }

  /** A buffer of at least `bytes`; `fresh` buffers are new, hence zero (WebGPU guarantees it). */
  acquire(bytes: number, label: string): { buffer: GPUBuffer; fresh: boolean } {
    const size = Math.max(SIZE_QUANTUM, Math.ceil(bytes / SIZE_QUANTUM) * SIZE_QUANTUM);
    const max = this.device.limits.maxBufferSize;
    if (size > max) {
      throw new LimitError(
        `${label}: ${bytes} bytes exceeds the adapter's maxBufferSize of ${max} bytes; ` +
          `split the tensor into smaller pieces`,
      );
    }
    let buffer = this.#free.get(size)?.pop();
    const fresh = !buffer;
    if (!buffer) {
      buffer = this.device.createBuffer({ size, usage: TENSOR_USAGE, label });
      this.#bytesAllocated += size;
    }
    this.#inUse.add(buffer);
    this.#bytesInUse += size;
    return { buffer, fresh };
  }

  release(buffer: GPUBuffer): void {
    if (!this.#inUse.delete(buffer)) throw new Error(`buffer ${buffer.label} released twice`);
    this.#bytesInUse -= buffer.size;
    const bucket = this.#free.get(buffer.size) ?? [];
    bucket.push(buffer);
    this.#free.set(buffer.size, bucket);
  }

  /** Frees the buffers waiting for reuse (not those in use). */
  trim(): void {
    for (const bucket of this.#free.values()) {
      for (const buffer of bucket) {
        this.#bytesAllocated -= buffer.size;
        buffer.destroy();
      }
    }
    this.#free.clear();
  }

  destroy(): void {
    this.trim();
    for (const buffer of this.#inUse) buffer.destroy();
    this.#inUse.clear();
    this.#bytesAllocated = 0;
    this.#bytesInUse = 0;
  }
}
