// GELU with the tanh approximation (GPT-2's "gelu_new"), elementwise:
//   y  = ½·x·(1 + t),   t = tanh(u),   u = √(2/π)·(x + 0.044715·x³)
//   dy/dx = ½·(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)
// Evaluated as ½(1 + t) = σ(2u) and 1 − t² = 4·σ(2u)·σ(−2u): in f32, 1 − t² computed from t
// cancels to 0 for |x| ≳ 4 and the gradient's tail is lost; the sigmoid form keeps it.
// The GELU WGSL of every kernel is here: the elementwise op's, and that of the mixture's fused
// kernels (kernels/mixture.ts, through kernels/activation.ts), which get gelu and its slope
// from one exp (`gelu_and_slope`).
// The two slopes are equal in exact arithmetic but round differently; each kernel keeps its own
// so that results stay bit-identical.
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { type ElementwiseOptions, unary, type UnaryOp } from "./elementwise.ts";

/**
 * GELU-tanh in the sigmoid form on `type` (f32 or vec4f): `gelu(x)`, its parts `two_u` = 2u and
 * `sigmoid`; with `slope`, also `gelu_and_slope(x)`, (gelu(x), gelu'(x)) from one exp.
 */
export function geluWgsl(type: string, slope = false): string {
  const functions = `
const SQRT_2_OVER_PI = 0.7978845608028654;
fn two_u(x: ${type}) -> ${type} { return 2.0 * SQRT_2_OVER_PI * (x + 0.044715 * x * x * x); }
fn sigmoid(z: ${type}) -> ${type} { return 1.0 / (1.0 + exp(-z)); }
fn gelu(x: ${type}) -> ${type} { return x * sigmoid(two_u(x)); }`;
  if (!slope) return functions;
  return `${functions}
// (gelu(x), gelu'(x)) from one exp: with a = e^(−|z|) ≤ 1 (never overflows), σ(|z|) = 1/(1 + a)
// and σ(−|z|) = a·σ(|z|) exactly, where 1 − σ would cancel in the tails.
fn gelu_and_slope(x: ${type}) -> array<${type}, 2> {
  let z = two_u(x);
  let a = exp(-abs(z));
  let big = 1.0 / (1.0 + a);
  let small = a * big;
  let half_one_plus_t = select(small, big, z >= ${type}(0.0));
  let one_minus_t2 = 4.0 * big * small;
  let slope = half_one_plus_t + 0.5 * x * one_minus_t2 * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
  return array<${type}, 2>(x * half_one_plus_t, slope);
}`;
}

const GELU: UnaryOp = {
  name: "gelu",
  forward: {
    name: "gelu",
    inputs: ["x"],
    outputs: [{ name: "y", value: () => "gelu(v)" }],
    prelude: geluWgsl,
    setup: "let v = x[i];",
  },
  backward: {
    name: "gelu_backward",
    inputs: ["x", "dy"],
    outputs: [{ name: "dx", value: () => "dy[i] * slope" }],
    prelude: geluWgsl,
    setup: `let v = x[i];
  let z = two_u(v);
  let half_one_plus_t = sigmoid(z);
  let one_minus_t2 = 4.0 * half_one_plus_t * sigmoid(-z);
  let slope = half_one_plus_t + 0.5 * v * one_minus_t2 * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);`,
  },
};

/** y = gelu(x), elementwise. Saves x for backward. */
export function gelu(tape: Tape, x: Tensor, opts: ElementwiseOptions = {}): Tensor {
  return unary(tape, GELU, x, `gelu(${x.label})`, opts);
}
