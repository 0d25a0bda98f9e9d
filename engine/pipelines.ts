// Compute pipelines cached by their WGSL text: compiled once, asynchronously, with concurrent
// requests for the same text sharing one compilation. A compile error carries the numbered source.
import { LimitError, ShaderCompileError } from "./errors.ts";
import { bindGroupLayoutEntries, type BindingKind, storageBufferCount } from "./bindings.ts";

export interface Kernel {
  readonly label: string;
  readonly code: string;
  readonly layout: GPUBindGroupLayout;
  /** Resolves to the pipeline; rejects with a ShaderCompileError. */
  readonly pipeline: Promise<GPUComputePipeline>;
  /** Set once compiled, so encoding a step needs no await. */
  compiled?: GPUComputePipeline;
}

export class PipelineCache {
  #kernels = new Map<string, Kernel>();
  #layouts = new Map<string, GPUBindGroupLayout>();

  constructor(private readonly device: GPUDevice) {}

  get size(): number {
    return this.#kernels.size;
  }

  /** The kernel for this WGSL text, whose entry point is `main`, compiling it if new. */
  get(label: string, code: string, bindings: readonly BindingKind[]): Kernel {
    const key = `${bindings.join(",")}\n${code}`;
    const cached = this.#kernels.get(key);
    if (cached) return cached;
    this.#checkBindings(label, bindings);
    const layout = this.#layout(bindings);
    const kernel: Kernel = {
      label,
      code,
      layout,
      pipeline: this.#compile(label, code, layout),
    };
    kernel.pipeline.then((p) => kernel.compiled = p, () => {});
    this.#kernels.set(key, kernel);
    return kernel;
  }

  /**
   * A kernel binding more storage buffers than the device allows is refused here, by name: the
   * device would only report an invalid layout, outside any operation, and every use after it.
   */
  #checkBindings(label: string, bindings: readonly BindingKind[]): void {
    const count = storageBufferCount(bindings);
    const max = this.device.limits.maxStorageBuffersPerShaderStage;
    if (count > max) {
      throw new LimitError(
        `kernel "${label}" binds ${count} storage buffers, over the ${max} this WebGPU device ` +
          `allows in a shader stage (maxStorageBuffersPerShaderStage); run on an adapter that ` +
          `allows ${count}, or report the kernel as a bug`,
      );
    }
  }

  #layout(bindings: readonly BindingKind[]): GPUBindGroupLayout {
    const key = bindings.join(",");
    let layout = this.#layouts.get(key);
    if (!layout) {
      layout = this.device.createBindGroupLayout({
        label: key,
        entries: bindGroupLayoutEntries(bindings),
      });
      this.#layouts.set(key, layout);
    }
    return layout;
  }

  async #compile(
    label: string,
    code: string,
    layout: GPUBindGroupLayout,
  ): Promise<GPUComputePipeline> {
    // In a scope, so that a bad shader is reported once, here, and not also as an uncaptured error.
    this.device.pushErrorScope("validation");
    const module = this.device.createShaderModule({ label, code });
    const moduleError = this.device.popErrorScope();
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === "error");
    const scopeMessage = (await moduleError)?.message;
    if (errors.length > 0 || scopeMessage) {
      throw new ShaderCompileError(
        label,
        errors.map((m) => `line ${m.lineNum}:${m.linePos}: ${m.message.trim()}`).join("\n") ||
          scopeMessage!,
        code,
      );
    }
    this.device.pushErrorScope("validation");
    const pipelinePromise = this.device.createComputePipelineAsync({
      label,
      layout: this.device.createPipelineLayout({ label, bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
    });
    const scopeError = this.device.popErrorScope();
    try {
      return await pipelinePromise;
    } catch (e) {
      const err = await scopeError;
      throw new ShaderCompileError(label, err?.message ?? (e as Error).message, code);
    }
  }
}
