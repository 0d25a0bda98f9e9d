// GELU with the tanh approximation (GPT-2's "gelu_new"), elementwise:
//   y  = ½·x·(1 + t),   t = tanh(u),   u = √(2/π)·(x + 0.044715·x³)
//   dy/dx = ½·(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)
// Evaluated as ½(1 + t) = σ(2u) and 1 − t² = 4·σ(2u)·σ(−2u): in f32, 1 − t² computed from t
// cancels to 0 for |x| ≳ 4 and the gradient's tail is lost; the sigmoid form keeps it.
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { grid1d } from "./grid.ts";

const WORKGROUP = 64;

/** Elements per load: vec4 when the length allows (storage loads cost per instruction here). */
function elementType(n: number): { type: string; units: number } {
  return n % 4 === 0 ? { type: "vec4f", units: n / 4 } : { type: "f32", units: n };
}

const prelude = (type: string) => `
const SQRT_2_OVER_PI = 0.7978845608028654;
fn two_u(x: ${type}) -> ${type} { return 2.0 * SQRT_2_OVER_PI * (x + 0.044715 * x * x * x); }
fn sigmoid(z: ${type}) -> ${type} { return 1.0 / (1.0 + exp(-z)); }
`;

function forwardWgsl(n: number, index: string): string {
  const { type, units } = elementType(n);
  return `${prelude(type)}
@group(0) @binding(0) var<storage, read> x: array<${type}>;
@group(0) @binding(1) var<storage, read_write> y: array<${type}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${units}u) { return; }
  let v = x[i];
  y[i] = v * sigmoid(two_u(v));
}`;
}

function backwardWgsl(n: number, index: string, accumulate: boolean): string {
  const { type, units } = elementType(n);
  return `${prelude(type)}
@group(0) @binding(0) var<storage, read> x: array<${type}>;
@group(0) @binding(1) var<storage, read> dy: array<${type}>;
@group(0) @binding(2) var<storage, read_write> dx: array<${type}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${units}u) { return; }
  let v = x[i];
  let z = two_u(v);
  let half_one_plus_t = sigmoid(z);
  let one_minus_t2 = 4.0 * half_one_plus_t * sigmoid(-z);
  let slope = half_one_plus_t + 0.5 * v * one_minus_t2 * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
  dx[i] = ${accumulate ? "dx[i] + " : ""}dy[i] * slope;
}`;
}

/** y = gelu(x), elementwise. Saves x for backward. */
export function gelu(tape: Tape, x: Tensor): Tensor {
  const engine = tape.engine;
  const y = tape.tensor(x.shape, `gelu(${x.label})`);
  const grid = grid1d(elementType(x.size).units, WORKGROUP);
  const forward = engine.kernel("gelu", forwardWgsl(x.size, grid.index), ["read", "rw"]);
  tape.record({
    name: "gelu",
    inputs: [x],
    outputs: [y],
    forward: [engine.dispatch("gelu", forward, [x, y], grid.workgroups)],
    backward: (ctx) => {
      const dx = ctx.gradInput(0);
      if (!dx) return [];
      const kernel = engine.kernel(
        "gelu_backward",
        backwardWgsl(x.size, grid.index, dx.accumulate),
        ["read", "read", "rw"],
      );
      return [
        engine.dispatch(
          "gelu backward",
          kernel,
          [x, ctx.gradOutput(0), dx.tensor],
          grid.workgroups,
        ),
      ];
    },
  });
  return y;
}
