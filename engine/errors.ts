// Errors the engine raises. Each names what the user can do about it.

/** No WebGPU adapter could be found. */
export class NoAdapterError extends Error {
  /** `where` picks the advice: a Deno process (the default when `Deno` exists) or a browser. */
  constructor(where: "deno" | "browser" = ("Deno" in globalThis) ? "deno" : "browser") {
    super(
      where === "deno"
        ? "No WebGPU adapter found. On a machine without a GPU install Mesa's lavapipe " +
          "(software Vulkan): `sudo apt-get install -y mesa-vulkan-drivers` (Debian/Ubuntu), " +
          "or run `bash scripts/setup.sh`, which does it for you."
        : "No WebGPU adapter in this browser. Open the page in one with WebGPU enabled (Chrome " +
          "or Edge 113+, Safari 26+, Firefox 141+); headless Chromium needs " +
          "--enable-unsafe-webgpu, which `deno task browser` (without --serve) passes for you.",
    );
    this.name = "NoAdapterError";
  }
}

/** A validation, out-of-memory or internal error reported by WebGPU for a named operation. */
export class GpuError extends Error {
  constructor(operation: string, kind: string, message: string) {
    super(`WebGPU ${kind} error in ${operation}: ${message}`);
    this.name = "GpuError";
  }
}

/** The GPU device was lost; nothing computed after this point can be trusted. */
export class DeviceLostError extends Error {
  constructor(reason: string, message: string) {
    super(`WebGPU device lost (${reason}): ${message}`);
    this.name = "DeviceLostError";
  }
}

/** A WGSL shader failed to compile; the message carries the numbered source. */
export class ShaderCompileError extends Error {
  constructor(label: string, messages: string, source: string) {
    const numbered = source.split("\n").map((line, i) => `${String(i + 1).padStart(4)} | ${line}`)
      .join("\n");
    super(`WGSL compile error in kernel "${label}":\n${messages}\n--- source ---\n${numbered}`);
    this.name = "ShaderCompileError";
  }
}

/** Shapes or sizes that an operation cannot accept. */
export class ShapeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ShapeError";
  }
}

/** A tensor or dispatch larger than the adapter allows. */
export class LimitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LimitError";
  }
}
