// Which kernel family an engine's ops use, where a family has two ways to read its operands:
// `texture` reads matmul and attention operands through storage textures (fast on lavapipe,
// whose storage-buffer loads are slow); `storage` reads storage buffers (real GPUs). The choice
// is made once per engine: set explicitly (`chooseKernelVariant`, e.g. bench's --variant), else
// from the COMIGS_VARIANT environment variable, else by the adapter (texture on CPU fallback
// adapters).
import type { Engine } from "../engine/device.ts";

export type KernelVariant = "texture" | "storage";

const chosen = new WeakMap<Engine, KernelVariant>();

/**
 * `value` as a variant, "auto" included; one error naming where it came from (`source`, e.g.
 * "--variant") otherwise.
 */
export function parseKernelVariant(value: string, source: string): KernelVariant | "auto" {
  if (value === "texture" || value === "storage" || value === "auto") return value;
  throw new Error(`${source}: unknown kernel variant "${value}"; use texture, storage or auto`);
}

/**
 * Makes `engine`'s kernels use `variant` from now on; "auto" forgets an earlier choice, so the
 * next `kernelVariant` reads COMIGS_VARIANT and the adapter again.
 */
export function chooseKernelVariant(engine: Engine, variant: KernelVariant | "auto"): void {
  if (variant === "auto") chosen.delete(engine);
  else chosen.set(engine, parseKernelVariant(variant, "chooseKernelVariant") as KernelVariant);
}

/**
 * The kernel family of `engine`: the one chosen, else COMIGS_VARIANT when set, else `texture` on
 * a CPU fallback adapter and `storage` on any other. Decided on the first call and kept, so all
 * of an engine's kernels agree.
 */
export function kernelVariant(engine: Engine): KernelVariant {
  let variant = chosen.get(engine);
  if (variant === undefined) {
    // The only environment read of the kernels; in a browser tab `Deno` is undefined.
    const env = (globalThis as { Deno?: typeof Deno }).Deno?.env.get("COMIGS_VARIANT");
    const requested = env ? parseKernelVariant(env, "COMIGS_VARIANT") : "auto";
    variant = requested !== "auto" ? requested : engine.isFallbackAdapter ? "texture" : "storage";
    chosen.set(engine, variant);
  }
  return variant;
}
