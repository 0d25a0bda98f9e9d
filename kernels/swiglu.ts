// The SiLU-gated product of Llama's MLP (SwiGLU: down(silu(gate(x)) ⊙ up(x))), elementwise:
//   y = silu(g) ⊙ u,   silu(g) = g·σ(g),   σ(g) = 1/(1 + e^(−g))
//   du = dy ⊙ silu(g),   dg = dy ⊙ u ⊙ silu'(g),   silu'(g) = σ(g)·(1 + g·σ(−g))
// Careful in f32: e^(−g) overflows for g < −88.7, and σ(−g) as e^(−g)/(1 + e^(−g)) is then
// inf/inf = NaN; σ(−g) as 1 − σ(g) loses its relative accuracy for g ≳ 10 (mildly here: g·σ(−g)
// is then under 1e-6 of the slope). So both sigmoids come from e = e^(−|g|) ∈ (0, 1]:
// σ(|g|) = 1/(1 + e) and σ(−|g|) = e/(1 + e), each to a few ulps, picked by the sign of g.
// Forward and backward are entries of the elementwise skeleton (kernels/elementwise.ts); the
// backward one writes dg and du from one evaluation of the sigmoids. The SiLU WGSL of every
// kernel is here: the elementwise op's, and that of the mixture of experts over a SwiGLU MLP
// (kernels/moe_swiglu.ts, through kernels/activation.ts).
import type { Command } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import { sharesMemory, type Tensor } from "../engine/tensor.ts";
import { type Elementwise, elementwise, type ElementwiseOptions } from "./elementwise.ts";

/**
 * SiLU on `type` (f32 or vec4f): `sigmoids(g)`, σ(g) and σ(−g) from one exp that cannot
 * overflow; `silu(g)`; and `silu_and_slope(g)`, (silu(g), silu'(g)) from one evaluation of them.
 */
export function siluWgsl(type: string): string {
  return `
struct Sigmoids { pos: ${type}, neg: ${type} }
fn sigmoids(g: ${type}) -> Sigmoids {
  let e = exp(-abs(g));
  let big = 1.0 / (1.0 + e);
  let small = e * big;
  let positive = g >= ${type}(0.0);
  return Sigmoids(select(small, big, positive), select(big, small, positive));
}
fn silu(g: ${type}) -> ${type} { return g * sigmoids(g).pos; }
fn silu_and_slope(g: ${type}) -> array<${type}, 2> {
  let s = sigmoids(g);
  return array<${type}, 2>(g * s.pos, s.pos * (1.0 + g * s.neg));
}`;
}

const FORWARD: Elementwise = {
  name: "swiglu",
  inputs: ["gate", "up"],
  outputs: [{ name: "y", value: () => "silu(gate[i]) * up[i]" }],
  prelude: siluWgsl,
};

/** Both gradients; a backward pass keeps those it is asked for. */
const BACKWARD: Elementwise = {
  name: "swiglu_backward",
  inputs: ["gate", "up", "dy"],
  outputs: [
    { name: "dgate", value: () => "d * up[i] * act[1]" },
    { name: "dup", value: () => "d * act[0]" },
  ],
  prelude: siluWgsl,
  setup: `let act = silu_and_slope(gate[i]);
  let d = dy[i];`,
};

/** y = silu(gate) ⊙ up, elementwise, for f32 tensors of one shape. Saves gate and up. */
export function swiglu(
  tape: Tape,
  gate: Tensor,
  up: Tensor,
  opts: ElementwiseOptions = {},
): Tensor {
  if (gate.shape.length !== up.shape.length || gate.shape.some((d, i) => d !== up.shape[i])) {
    throw new ShapeError(`swiglu: gate ${gate} and up ${up} must have the same shape`);
  }
  if (gate.dtype !== "f32" || up.dtype !== "f32") {
    throw new ShapeError(`swiglu: gate ${gate} and up ${up} must be f32`);
  }
  // Their gradients would be one tensor, bound twice for writing by the backward kernel.
  if (sharesMemory(gate, up)) {
    throw new ShapeError(`swiglu: gate ${gate} and up ${up} share memory; pass separate tensors`);
  }
  const engine = tape.engine;
  const y = tape.tensor(gate.shape, `swiglu(${gate.label}, ${up.label})`);
  tape.record({
    name: "swiglu",
    inputs: [gate, up],
    outputs: [y],
    forward: elementwise(engine, "swiglu", FORWARD, [gate, up, y], opts),
    backward: (ctx): Command[] => {
      const targets = [ctx.gradInput(0), ctx.gradInput(1)];
      const wanted = BACKWARD.outputs.filter((_, k) => targets[k] !== null);
      if (wanted.length === 0) return [];
      const given = targets.filter((target) => target !== null);
      return elementwise(
        engine,
        "swiglu backward",
        { ...BACKWARD, outputs: wanted },
        [gate, up, ctx.gradOutput(0), ...given.map((target) => target.tensor)],
        { ...opts, accumulate: given.map((target) => target.accumulate) },
      );
    },
  });
  return y;
}
