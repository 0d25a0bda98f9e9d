// Residual add of two tensors of the same shape: out = a + b.
// Backward: ∂out/∂a = ∂out/∂b = I, so each input's gradient is the upstream gradient itself.
// Overwriting a gradient is a buffer copy; accumulating is `target += dout`. When a and b are the
// same tensor, the tape hands out two accumulate targets on one tensor: two separate dispatches.
import type { Command } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { grid1d } from "./grid.ts";

const WORKGROUP = 64;

/** Elements are processed as vec4 when the element count allows it (one load per 4 floats). */
function vectorType(size: number): { type: string; width: number } {
  return size % 4 === 0 ? { type: "vec4f", width: 4 } : { type: "f32", width: 1 };
}

function addWgsl(type: string, count: number, index: string): string {
  return `
@group(0) @binding(0) var<storage, read> a: array<${type}>;
@group(0) @binding(1) var<storage, read> b: array<${type}>;
@group(0) @binding(2) var<storage, read_write> out: array<${type}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${count}u) { return; }
  out[i] = a[i] + b[i];
}`;
}

function accumulateWgsl(type: string, count: number, index: string): string {
  return `
@group(0) @binding(0) var<storage, read> dout: array<${type}>;
@group(0) @binding(1) var<storage, read_write> grad: array<${type}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${count}u) { return; }
  grad[i] = grad[i] + dout[i];
}`;
}

// Labels nest their inputs' labels. A residual stream adds x to f(x), whose label holds x's
// again: unbounded, the label would grow 4× per GPT-2 block (~1e9 characters at 12 layers).
const MAX_LABEL = 120;

function sumLabel(a: string, b: string): string {
  const label = `${a}+${b}`;
  if (label.length <= MAX_LABEL) return label;
  const half = MAX_LABEL / 2 - 1;
  return `${label.slice(0, half)}…${label.slice(-half)}`;
}

/** out = a + b for tensors of the same shape. */
export function add(tape: Tape, a: Tensor, b: Tensor): Tensor {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new ShapeError(`add: shapes of ${a} and ${b} differ`);
  }
  if (a.dtype !== "f32" || b.dtype !== "f32") throw new ShapeError(`add: ${a} + ${b} must be f32`);
  const engine = tape.engine;
  const out = tape.tensor(a.shape, sumLabel(a.label, b.label));
  const { type, width } = vectorType(a.size);
  const count = a.size / width;
  const grid = grid1d(count, WORKGROUP);
  const forward = engine.kernel("add", addWgsl(type, count, grid.index), ["read", "read", "rw"]);
  tape.record({
    name: "add",
    inputs: [a, b],
    outputs: [out],
    forward: [engine.dispatch("add", forward, [a, b, out], grid.workgroups)],
    backward: (ctx) => {
      const dout = ctx.gradOutput(0);
      const commands: Command[] = [];
      for (const i of [0, 1]) {
        const target = ctx.gradInput(i);
        if (!target) continue;
        const label = `add backward to ${i === 0 ? a.label : b.label}`;
        if (!target.accumulate) {
          commands.push({ kind: "copy", label, src: dout, dst: target.tensor });
          continue;
        }
        const kernel = engine.kernel(
          "add_accumulate",
          accumulateWgsl(type, count, grid.index),
          ["read", "rw"],
        );
        commands.push(engine.dispatch(label, kernel, [dout, target.tensor], grid.workgroups));
      }
      return commands;
    },
  });
  return out;
}
