// The engine: one WebGPU device with the adapter's maximum limits, a buffer pool, a pipeline
// cache, and `run`, which records a list of commands into one encoder and submits it once.
import { BufferPool } from "./buffers.ts";
import type { BindingKind } from "./bindings.ts";
import { DeviceLostError, GpuError, LimitError, NoAdapterError, ShapeError } from "./errors.ts";
import { type Kernel, PipelineCache } from "./pipelines.ts";
import { checkShape, type DType, sizeOf, Tensor } from "./tensor.ts";

export interface EngineOptions {
  /** Print the adapter in use to stderr. */
  verbose?: boolean;
}

/** One compute dispatch with its bind group, built once and replayed every step. */
export interface Dispatch {
  kind: "dispatch";
  label: string;
  kernel: Kernel;
  bindGroup: GPUBindGroup;
  workgroups: readonly [number, number, number];
  /** The tensors bound, so `run` can refuse a dispatch whose tensors were disposed. */
  tensors: readonly Tensor[];
}

/** A buffer-to-buffer copy between two tensors of the same byte length. */
export interface Copy {
  kind: "copy";
  label: string;
  src: Tensor;
  dst: Tensor;
}

/** Zeroes a tensor (encoder.clearBuffer). */
export interface Clear {
  kind: "clear";
  label: string;
  tensor: Tensor;
}

export type Command = Dispatch | Copy | Clear;

/** A resource bound to one binding of a dispatch. */
export type Resource = Tensor | GPUBuffer | GPUTextureView;

/** A small uniform buffer whose contents can change between steps without new bind groups. */
export class Uniform {
  constructor(readonly buffer: GPUBuffer, private readonly device: GPUDevice) {}
  write(values: Float32Array<ArrayBuffer> | Uint32Array<ArrayBuffer>): void {
    this.device.queue.writeBuffer(this.buffer, 0, values);
  }
}

/** The tensors a command reads or writes. */
function commandTensors(command: Command): readonly Tensor[] {
  switch (command.kind) {
    case "dispatch":
      return command.tensors;
    case "copy":
      return [command.src, command.dst];
    case "clear":
      return [command.tensor];
  }
}

export class Engine {
  static #open = new Set<Engine>();
  readonly pool: BufferPool;
  readonly pipelines: PipelineCache;
  #lost: DeviceLostError | null = null;
  #textureBytes = 0;
  #otherBytes = 0;

  private constructor(
    readonly device: GPUDevice,
    readonly adapterName: string,
    readonly isFallbackAdapter: boolean,
  ) {
    this.pool = new BufferPool(device);
    this.pipelines = new PipelineCache(device);
    device.lost.then((info) => {
      this.#lost = new DeviceLostError(info.reason ?? "unknown", info.message);
    });
    device.addEventListener("uncapturederror", (event) => {
      const error = (event as GPUUncapturedErrorEvent).error;
      console.error(`WebGPU error outside any engine operation: ${error.message}`);
    });
  }

  static async create(options: EngineOptions = {}): Promise<Engine> {
    // Without it, Deno's Vulkan back end warns on every run.
    // The only Deno-specific lines of the engine; in a browser tab `deno` is undefined.
    const deno = (globalThis as { Deno?: typeof Deno }).Deno;
    if (deno && !deno.env.get("XDG_RUNTIME_DIR")) {
      deno.env.set("XDG_RUNTIME_DIR", deno.makeTempDirSync());
    }
    const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
    const adapter = await gpu?.requestAdapter({ powerPreference: "high-performance" });
    if (!adapter) throw new NoAdapterError();
    const requiredLimits: Record<string, number> = {};
    for (const name in adapter.limits) {
      const value = (adapter.limits as unknown as Record<string, unknown>)[name];
      if (typeof value === "number") requiredLimits[name] = value;
    }
    const wanted: GPUFeatureName[] = ["timestamp-query", "shader-f16"];
    const device = await adapter.requestDevice({
      requiredLimits,
      requiredFeatures: wanted.filter((f) => adapter.features.has(f)),
    });
    const info = adapter.info;
    const name = info.description || [info.vendor, info.architecture, info.device]
      .filter(Boolean).join(" ") ||
      "unknown adapter";
    const fallback = (info as GPUAdapterInfo & { isFallbackAdapter?: boolean }).isFallbackAdapter ??
      false;
    if (options.verbose) {
      console.error(`WebGPU adapter: ${name}${fallback ? " (CPU fallback)" : ""}`);
    }
    const engine = new Engine(device, name, fallback);
    Engine.#open.add(engine);
    return engine;
  }

  get limits(): GPUSupportedLimits {
    return this.device.limits;
  }

  /** Bytes of GPU memory held: tensor buffers (pooled), textures and uniforms. */
  get bytesAllocated(): number {
    return this.pool.bytesAllocated + this.#textureBytes + this.#otherBytes;
  }

  /** Bytes of tensor buffers currently owned by live tensors, plus textures and uniforms. */
  get bytesInUse(): number {
    return this.pool.bytesInUse + this.#textureBytes + this.#otherBytes;
  }

  /** A new tensor, zero-initialised by WebGPU or filled with `data`. */
  tensor(
    shape: readonly number[],
    opts: { dtype?: DType; label?: string; data?: ArrayLike<number> } = {},
  ): Tensor {
    const label = opts.label ?? "tensor";
    checkShape(shape, label);
    const dtype = opts.dtype ?? "f32";
    const { buffer, fresh } = this.pool.acquire(sizeOf(shape) * 4, label);
    const tensor = new Tensor(shape, dtype, buffer, 0, label, this.pool);
    if (opts.data) this.write(tensor, opts.data);
    else if (!fresh) {
      // A reused buffer holds its last owner's values; clearBuffer is ~30× faster than
      // uploading zeros.
      const encoder = this.device.createCommandEncoder({ label: `zero ${label}` });
      encoder.clearBuffer(buffer, 0, buffer.size);
      this.device.queue.submit([encoder.finish()]);
    }
    return tensor;
  }

  /** A view of `count` consecutive elements of `base`, starting at element `start`. */
  view(base: Tensor, start: number, shape: readonly number[], label = base.label): Tensor {
    checkShape(shape, label);
    const offset = base.offset + start * 4;
    const align = this.limits.minStorageBufferOffsetAlignment;
    if (start < 0 || start + sizeOf(shape) > base.size) {
      throw new ShapeError(`view ${label} [${start}, +${sizeOf(shape)}) outside ${base}`);
    }
    if (offset % align !== 0) {
      throw new ShapeError(`view ${label}: byte offset ${offset} is not a multiple of ${align}`);
    }
    return new Tensor(shape, base.dtype, base.buffer, offset, label, null, base);
  }

  write(tensor: Tensor, data: ArrayLike<number>): void {
    tensor.assertLive();
    if (data.length !== tensor.size) {
      throw new ShapeError(`${tensor}: got ${data.length} values for ${tensor.size} elements`);
    }
    const array = tensor.dtype === "f32"
      ? (data instanceof Float32Array ? data : new Float32Array(data))
      : (data instanceof Uint32Array ? data : new Uint32Array(data));
    this.device.queue.writeBuffer(tensor.buffer, tensor.offset, array as BufferSource);
  }

  /** Copies a tensor back to the CPU. This waits for all submitted work. */
  async read(tensor: Tensor): Promise<Float32Array | Uint32Array> {
    tensor.assertLive();
    this.#assertAlive();
    const bytes = Math.ceil(tensor.byteLength / 4) * 4;
    const staging = this.device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      label: `read ${tensor.label}`,
    });
    try {
      const encoder = this.device.createCommandEncoder();
      encoder.copyBufferToBuffer(tensor.buffer, tensor.offset, staging, 0, bytes);
      this.device.queue.submit([encoder.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      const copy = staging.getMappedRange().slice(0);
      return tensor.dtype === "f32" ? new Float32Array(copy) : new Uint32Array(copy);
    } finally {
      staging.destroy();
    }
  }

  /** Reads an f32 tensor. */
  async readF32(tensor: Tensor): Promise<Float32Array> {
    if (tensor.dtype !== "f32") throw new ShapeError(`${tensor} is not f32`);
    return await this.read(tensor) as Float32Array;
  }

  uniform(bytes: number, label: string): Uniform {
    const size = Math.ceil(bytes / 16) * 16;
    this.#otherBytes += size;
    return new Uniform(
      this.device.createBuffer({
        size,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        label,
      }),
      this.device,
    );
  }

  /** An rgba32float texture usable as a read-only and write-only storage texture. */
  texture(width: number, height: number, label: string): GPUTexture {
    const max = this.limits.maxTextureDimension2D;
    if (width > max || height > max) {
      throw new LimitError(`${label}: texture ${width}×${height} exceeds the adapter's ${max}`);
    }
    this.#textureBytes += width * height * 16;
    return this.device.createTexture({
      size: [width, height],
      format: "rgba32float",
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
      label,
    });
  }

  releaseUniform(uniform: Uniform): void {
    this.#otherBytes -= uniform.buffer.size;
    uniform.buffer.destroy();
  }

  releaseTexture(texture: GPUTexture): void {
    this.#textureBytes -= texture.width * texture.height * 16;
    texture.destroy();
  }

  /** The compiled-once kernel for a WGSL text whose bindings are `bindings`, in order. */
  kernel(label: string, code: string, bindings: readonly BindingKind[]): Kernel {
    return this.pipelines.get(label, code, bindings);
  }

  /** Builds a dispatch once: its bind group is created here and reused on every run. */
  dispatch(
    label: string,
    kernel: Kernel,
    resources: readonly Resource[],
    workgroups: number | readonly [number, number?, number?],
  ): Dispatch {
    const [x, y = 1, z = 1] = typeof workgroups === "number" ? [workgroups] : workgroups;
    const maxGroups = this.limits.maxComputeWorkgroupsPerDimension;
    if ([x, y, z].some((n) => !Number.isInteger(n) || n < 1 || n > maxGroups)) {
      throw new LimitError(
        `${label}: workgroup grid [${x}, ${y}, ${z}] outside 1..${maxGroups} per dimension`,
      );
    }
    const maxBinding = this.limits.maxStorageBufferBindingSize;
    const tensors = resources.filter((r): r is Tensor => r instanceof Tensor);
    const entries = resources.map((resource, binding): GPUBindGroupEntry => {
      if (resource instanceof Tensor) {
        if (resource.byteLength > maxBinding) {
          throw new LimitError(
            `${label}: ${resource} is ${resource.byteLength} bytes, over the adapter's ` +
              `maxStorageBufferBindingSize of ${maxBinding}; split it by rows`,
          );
        }
        return { binding, resource: resource.binding };
      }
      if (resource instanceof GPUBuffer) return { binding, resource: { buffer: resource } };
      return { binding, resource };
    });
    const bindGroup = this.device.createBindGroup({ label, layout: kernel.layout, entries });
    return { kind: "dispatch", label, kernel, bindGroup, workgroups: [x, y, z], tensors };
  }

  /**
   * Records `commands` into one command encoder and submits it once. Validation and
   * out-of-memory errors are reported with `label` and the commands' labels.
   */
  async run(commands: readonly Command[], label = "run"): Promise<void> {
    this.#assertAlive();
    for (const command of commands) {
      // A disposed tensor's buffer may already belong to another tensor: writing it is silent
      // corruption, so replaying a command over disposed tensors is refused.
      const dead = commandTensors(command).find((t) => t.disposed);
      if (dead) {
        throw new Error(`${label}: "${command.label}" uses tensor "${dead.label}" after dispose`);
      }
      // Checked before the error scopes are pushed: a throw while encoding would leave them.
      if (command.kind === "copy" && command.src.byteLength !== command.dst.byteLength) {
        throw new ShapeError(
          `${command.label}: copy ${command.src} to ${command.dst} of another size`,
        );
      }
      if (command.kind === "dispatch" && !command.kernel.compiled) await command.kernel.pipeline;
    }
    const device = this.device;
    device.pushErrorScope("internal");
    device.pushErrorScope("out-of-memory");
    device.pushErrorScope("validation");
    const encoder = device.createCommandEncoder({ label });
    let pass: GPUComputePassEncoder | null = null;
    for (const command of commands) {
      if (command.kind === "dispatch") {
        pass ??= encoder.beginComputePass({ label });
        pass.setPipeline(command.kernel.compiled!);
        pass.setBindGroup(0, command.bindGroup);
        pass.dispatchWorkgroups(...command.workgroups);
      } else if (command.kind === "clear") {
        pass?.end();
        pass = null;
        const { tensor } = command;
        encoder.clearBuffer(tensor.buffer, tensor.offset, Math.ceil(tensor.byteLength / 4) * 4);
      } else {
        pass?.end();
        pass = null;
        const { src, dst } = command;
        encoder.copyBufferToBuffer(src.buffer, src.offset, dst.buffer, dst.offset, src.byteLength);
      }
    }
    pass?.end();
    device.queue.submit([encoder.finish()]);
    const [validation, oom, internal] = await Promise.all([
      device.popErrorScope(),
      device.popErrorScope(),
      device.popErrorScope(),
    ]);
    const error = validation ?? oom ?? internal;
    if (error) {
      const kind = validation ? "validation" : oom ? "out-of-memory" : "internal";
      const names = [...new Set(commands.map((c) => c.label))].join(", ");
      throw new GpuError(`${label} [${names}]`, kind, error.message);
    }
  }

  /** Waits until the GPU has finished all submitted work. */
  async sync(): Promise<void> {
    await this.device.queue.onSubmittedWorkDone();
    this.#assertAlive();
  }

  #assertAlive(): void {
    if (this.#lost) throw this.#lost;
  }

  /**
   * Waits for the GPU to finish the work submitted, then frees the device. A process must not
   * exit with work in flight: lavapipe's queue thread runs on in LLVM while exit() tears LLVM's
   * globals down, and the process aborts ("double free or corruption", or a segfault) instead of
   * ending with its own exit code — 4 of 30 exits right after a submit did; none after this.
   */
  async close(): Promise<void> {
    if (!Engine.#open.delete(this)) return;
    // Refuse runs and reads from here on, so the wait below is for the last of the work.
    this.#lost ??= new DeviceLostError("destroyed", "the engine was closed");
    await this.device.queue.onSubmittedWorkDone();
    this.pool.destroy();
    this.device.destroy();
  }

  /** Closes every engine of this process still open: what an entry point does before it exits. */
  static async closeAll(): Promise<void> {
    await Promise.all([...Engine.#open].map((engine) => engine.close()));
  }
}
