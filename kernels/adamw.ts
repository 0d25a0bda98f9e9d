// One fused AdamW update of a parameter tensor, as torch.optim.AdamW computes it (step t ≥ 1):
//   p ← p·(1 − lr·wd)
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g²
//   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
// Every scalar that changes with lr or t is folded on the CPU in float64 (as PyTorch does with
// Python floats) and read from a uniform, so the dispatches are built once and replayed.
import type { Command, Engine, Uniform } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bindingChunks, chunkView } from "./chunks.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";

const WORKGROUP = 64;

/** Bytes of the uniform holding the step's hyperparameters (eight f32, `Hyper` below). */
export const ADAMW_UNIFORM_BYTES = 32;

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

/** The uniform's contents for step t (1-based), in the order of the WGSL struct `Hyper`. */
export function adamwUniformValues(h: AdamWHyper, t: number): Float32Array<ArrayBuffer> {
  const biasCorrection1 = 1 - h.beta1 ** t;
  const biasCorrection2 = 1 - h.beta2 ** t;
  return Float32Array.of(
    1 - h.lr * h.weightDecay,
    h.beta1,
    1 - h.beta1,
    h.beta2,
    1 - h.beta2,
    h.lr / biasCorrection1,
    Math.sqrt(biasCorrection2),
    h.eps,
  );
}

function adamwWgsl(units: number, index: string): string {
  return `
struct Hyper {
  decay: f32,           // 1 − lr·wd
  beta1: f32,
  one_minus_beta1: f32,
  beta2: f32,
  one_minus_beta2: f32,
  step_size: f32,       // lr / (1 − β1^t)
  sqrt_bc2: f32,        // √(1 − β2^t)
  eps: f32,
}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${units}u) { return; }
  let grad = g[i];
  let m_t = h.beta1 * m[i] + h.one_minus_beta1 * grad;
  let v_t = h.beta2 * v[i] + h.one_minus_beta2 * grad * grad;
  m[i] = m_t;
  v[i] = v_t;
  let denom = sqrt(v_t) / h.sqrt_bc2 + h.eps;
  p[i] = h.decay * p[i] - h.step_size * (m_t / denom);
}`;
}

/**
 * The dispatches updating one parameter `p` from its gradient `g` and moments `m`, `v` (all f32,
 * same size) with the hyperparameters in `hyper` (ADAMW_UNIFORM_BYTES). One dispatch, or one
 * per chunk when the tensor is larger than a binding (`maxBindingBytes`, the adapter's limit).
 */
export function adamwCommands(
  engine: Engine,
  tensors: { p: Tensor; g: Tensor; m: Tensor; v: Tensor },
  hyper: Uniform,
  maxBindingBytes?: number,
): Command[] {
  const { p, g, m, v } = tensors;
  for (const t of [p, g, m, v]) {
    if (t.dtype !== "f32" || t.size !== p.size) {
      throw new ShapeError(`adamw: ${t} does not match the parameter ${p}`);
    }
  }
  return bindingChunks(engine, p.size, maxBindingBytes).map((chunk) => {
    const vec4 = chunk.count % 4 === 0;
    const units = vec4 ? chunk.count / 4 : chunk.count;
    const grid = grid1d(units, WORKGROUP);
    const array = `array<${vec4 ? "vec4f" : "f32"}>`;
    const kernel = declareKernel(engine, "adamw", [
      ["p", "rw", array],
      ["g", "read", array],
      ["m", "rw", array],
      ["v", "rw", array],
      ["h", "uniform", "Hyper"],
    ], adamwWgsl(units, grid.index));
    const views = [p, g, m, v].map((t) => chunkView(engine, t, chunk));
    return engine.dispatch(`adamw ${p.label}`, kernel, [...views, hyper.buffer], grid.workgroups);
  });
}
