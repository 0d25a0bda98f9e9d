// GPT-2's mixture of LoRA experts (kernels/moe_mlp.ts) as a problem for its tests: inputs at
// scales that exercise the whole GELU, and their upload as tensors.
import type { Engine } from "../../engine/device.ts";
import type { Tensor } from "../../engine/tensor.ts";
import type { MoeMlpWeights } from "../../kernels/moe_mlp.ts";
import type { MoeMlpInputs, MoeMlpShape } from "../ref/moe_mlp.ts";
import { f32, Rng } from "../util.ts";
import { type GateKind, gates } from "./mixture_inputs.ts";

/**
 * Inputs at scales that exercise the whole GELU (pre ≈ N(0, 1)–ish): x, dy ~ U(±1); W_f ~
 * U(±√(3/C)); W_p ~ U(±1/√H); biases U(±0.5); A's at their init scale U(±1/√in); B's U(±0.5)
 * (0 at init, but a zero B would hide half the math). All rounded to f32.
 */
export function inputs(
  shape: MoeMlpShape,
  seed: number,
  gateKind: GateKind,
): MoeMlpInputs & { dy: Float64Array } {
  const { rows: n, embd: c, hidden: h, rank: r, experts: e } = shape;
  const rng = new Rng(seed);
  const u = (size: number, bound: number) => f32(rng.uniform(size, -bound, bound));
  return {
    x: u(n * c, 1),
    gate: gates(rng, n, e, gateKind),
    fcWeight: u(c * h, Math.sqrt(3 / c)),
    fcBias: u(h, 0.5),
    projWeight: u(h * c, 1 / Math.sqrt(h)),
    projBias: u(c, 0.5),
    fcA: u(e * r * c, 1 / Math.sqrt(c)),
    fcB: u(e * h * r, 0.5),
    projA: u(e * r * h, 1 / Math.sqrt(h)),
    projB: u(e * c * r, 0.5),
    dy: u(n * c, 1),
  };
}

/** The differentiable inputs, in moeMlp's gradient order. */
export const GRADS = ["x", "gate", "fcA", "fcB", "projA", "projB"] as const;
export const FROZEN = ["fcWeight", "fcBias", "projWeight", "projBias"] as const;

function tensorShapes(s: MoeMlpShape): Record<keyof MoeMlpInputs, number[]> {
  const { rows: n, embd: c, hidden: h, rank: r, experts: e } = s;
  return {
    x: [n, c],
    gate: [n, e],
    fcWeight: [c, h],
    fcBias: [h],
    projWeight: [h, c],
    projBias: [c],
    fcA: [e, r, c],
    fcB: [e, h, r],
    projA: [e, r, h],
    projB: [e, c, r],
  };
}

export type Tensors = Record<keyof MoeMlpInputs, Tensor>;

export function upload(engine: Engine, shape: MoeMlpShape, v: MoeMlpInputs): Tensors {
  const shapes = tensorShapes(shape);
  const names = [...GRADS, ...FROZEN];
  return Object.fromEntries(
    names.map((name) => [name, engine.tensor(shapes[name], { data: v[name], label: name })]),
  ) as Tensors;
}

export function weightsOf(t: Record<string, Tensor>): MoeMlpWeights {
  const { fcWeight, fcBias, projWeight, projBias, fcA, fcB, projA, projB } = t;
  return { fcWeight, fcBias, projWeight, projBias, fcA, fcB, projA, projB };
}
