// The skeleton of the elementwise kernels (add, gelu, fill, scale, swiglu and their backward
// passes), so that each op is a table entry: its bindings and the WGSL value of element i of each
// output (a backward pass may write several gradients from shared work). One invocation
// per element, or per vec4 when the length allows (lavapipe pays per load instruction, and a
// vec4 load costs what a scalar one does); a tensor over the binding limit is processed in
// aligned chunks, one dispatch each, every chunk but the last a whole number of vec4s.
import type { Command, Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bindingChunks, chunkView } from "./chunks.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";

const WORKGROUP = 64;

/** A binding an elementwise kernel writes: `name`[i] (+)= `value`. */
export interface ElementwiseOutput {
  name: string;
  /** The WGSL value of element i, given the element type (f32, vec4f, u32 or vec4u). */
  value: (type: string) => string;
}

/** One elementwise kernel: each of `outputs`[i] (+)= its value, reading `inputs`[i]. */
export interface Elementwise {
  /** The kernel's label. */
  name: string;
  /** Bindings read, in order, then `outputs`, all arrays of the same length. */
  inputs: readonly string[];
  outputs: readonly ElementwiseOutput[];
  /** The element: f32 data, or u32 bits (fill writes any bits through u32). */
  scalar?: "f32" | "u32";
  /** Module-scope WGSL (constants, functions) for the element type `type`. */
  prelude?: (type: string) => string;
  /** `let` statements before the values, over element i. */
  setup?: string;
}

export interface ElementwiseOptions {
  /** Split as if a binding could hold at most this many bytes (tests of the chunked path). */
  maxBindingBytes?: number;
}

function elementwiseWgsl(
  op: Elementwise,
  type: string,
  units: number,
  index: string,
  accumulate: readonly boolean[],
): string {
  const stores = op.outputs.map(({ name, value }, k) => {
    const out = `${name}[i]`;
    return `\n  ${out} = ${accumulate[k] ? `${out} + ` : ""}${value(type)};`;
  });
  return `${op.prelude?.(type) ?? ""}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${units}u) { return; }${op.setup ? `\n  ${op.setup}` : ""}${stores.join("")}
}`;
}

/**
 * The dispatches of `op` over `tensors` (its inputs, then its outputs, all of one size), one per
 * binding chunk; an output whose entry of `accumulate` is true is added to, not overwritten.
 */
export function elementwise(
  engine: Engine,
  label: string,
  op: Elementwise,
  tensors: readonly Tensor[],
  opts: ElementwiseOptions & { accumulate?: readonly boolean[] } = {},
): Command[] {
  const scalar = op.scalar ?? "f32";
  return bindingChunks(engine, tensors[0].size, opts.maxBindingBytes).map((chunk) => {
    const vec4 = chunk.count % 4 === 0;
    const type = vec4 ? `vec4${scalar[0]}` : scalar;
    const units = vec4 ? chunk.count / 4 : chunk.count;
    const grid = grid1d(units, WORKGROUP);
    const array = `array<${type}>`;
    const kernel = declareKernel(engine, op.name, [
      ...op.inputs.map((name) => [name, "read", array] as const),
      ...op.outputs.map(({ name }) => [name, "rw", array] as const),
    ], elementwiseWgsl(op, type, units, grid.index, opts.accumulate ?? []));
    const views = tensors.map((t) => chunkView(engine, t, chunk));
    return engine.dispatch(label, kernel, views, grid.workgroups);
  });
}

/**
 * A differentiable op y = f(x) from two entries: `forward` writes y from x, `backward` writes
 * (or adds to) dx from dy and, when it lists it, x.
 */
export interface UnaryOp {
  /** Labels the dispatches `name` and `name backward`. */
  name: string;
  forward: Elementwise;
  backward: Omit<Elementwise, "inputs"> & { inputs: readonly ("x" | "dy")[] };
}

/** y = op(x), elementwise, into a tensor of x's shape labelled `label`. */
export function unary(
  tape: Tape,
  op: UnaryOp,
  x: Tensor,
  label: string,
  opts: ElementwiseOptions = {},
): Tensor {
  if (x.dtype !== "f32") throw new ShapeError(`${op.name}: ${x} is not f32`);
  x.assertLive();
  const engine = tape.engine;
  const y = tape.tensor(x.shape, label);
  tape.record({
    name: op.name,
    inputs: [x],
    outputs: [y],
    forward: elementwise(engine, op.name, op.forward, [x, y], opts),
    backward: (ctx) => {
      const dx = ctx.gradInput(0);
      if (!dx) return [];
      const given = { x, dy: ctx.gradOutput(0) };
      const inputs = op.backward.inputs.map((name) => given[name]);
      return elementwise(engine, `${op.name} backward`, op.backward, [...inputs, dx.tensor], {
        ...opts,
        accumulate: [dx.accumulate],
      });
    },
  });
  return y;
}
