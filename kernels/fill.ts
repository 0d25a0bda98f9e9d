// Utility commands and ops on whole tensors:
//   fill(t, c):      t ← c                  (a command; exact bits, any f32 or u32 value)
//   copy(src, dst):  dst ← src              (a command; same size and dtype, checked when built)
//   scale(x, α):     y = α·x,  dx = α·dy    (an op with backward)
// Elementwise kernels use vec4 loads when the length allows (4 elements per load instruction,
// see common notes) and split tensors over the binding limit into aligned chunks.
import type { Command, Copy, Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { grid1d } from "./grid.ts";

const WORKGROUP = 64;

/** A range of elements [start, start + count) of a tensor. */
export interface Chunk {
  start: number;
  count: number;
}

/**
 * Splits n elements into ranges that can each be bound (at most `maxBytes`, by default the
 * adapter's maxStorageBufferBindingSize) and viewed (start at a byte offset that is a multiple
 * of minStorageBufferOffsetAlignment). Every range but the last holds a multiple of 4 elements,
 * so vec4 kernels apply whenever n is a multiple of 4. Usually one range: the whole tensor.
 */
export function bindingChunks(
  engine: Engine,
  n: number,
  maxBytes = engine.limits.maxStorageBufferBindingSize,
): Chunk[] {
  const align = Math.max(4, engine.limits.minStorageBufferOffsetAlignment / 4);
  const perChunk = Math.floor(maxBytes / 4 / align) * align;
  if (perChunk < 1) throw new ShapeError(`bindingChunks: ${maxBytes} bytes hold no aligned chunk`);
  const chunks: Chunk[] = [];
  for (let start = 0; start < n; start += perChunk) {
    chunks.push({ start, count: Math.min(perChunk, n - start) });
  }
  return chunks;
}

/** The tensor itself when `chunk` covers it, otherwise a view of the chunk. */
export function chunkView(engine: Engine, t: Tensor, chunk: Chunk): Tensor {
  if (chunk.start === 0 && chunk.count === t.size) return t;
  return engine.view(t, chunk.start, [chunk.count], `${t.label}[${chunk.start}:+${chunk.count}]`);
}

/** The bits of `value` rounded to f32. */
function f32Bits(value: number): number {
  return new Uint32Array(Float32Array.of(value).buffer)[0];
}

/**
 * A WGSL expression for exactly this f32 (including -0, ±inf and NaN), by its bits. Naga does
 * not evaluate bitcast in const expressions, so use it in a `let`.
 */
function f32Literal(value: number): string {
  return `bitcast<f32>(0x${f32Bits(value).toString(16)}u)`;
}

function fillWgsl(units: number, vec4: boolean, index: string, bits: number): string {
  const type = vec4 ? "vec4u" : "u32";
  return `
@group(0) @binding(0) var<storage, read_write> out: array<${type}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${units}u) { return; }
  out[i] = ${type}(0x${bits.toString(16)}u);
}`;
}

/**
 * Commands that set every element of `t` to `value` (a float for f32 tensors, an integer in
 * [0, 2³²) for u32 ones). Zero bits become a clear; anything else a kernel writing the bits.
 */
export function fill(
  engine: Engine,
  t: Tensor,
  value: number,
  label = `fill ${t.label}`,
): Command[] {
  t.assertLive();
  let bits: number;
  if (t.dtype === "f32") bits = f32Bits(value);
  else if (Number.isInteger(value) && value >= 0 && value < 2 ** 32) bits = value;
  else throw new ShapeError(`${label}: ${value} is not a u32 value for ${t}`);
  if (bits === 0) return [{ kind: "clear", label, tensor: t }];
  return elementwise(
    engine,
    "fill",
    label,
    [t],
    (units, vec4, index) => fillWgsl(units, vec4, index, bits),
  );
}

/** A command copying `src` into `dst`; their element counts and dtypes must match. */
export function copy(src: Tensor, dst: Tensor, label = `copy ${src.label} to ${dst.label}`): Copy {
  src.assertLive();
  dst.assertLive();
  if (src.size !== dst.size || src.dtype !== dst.dtype) {
    throw new ShapeError(`${label}: cannot copy ${src} into ${dst}`);
  }
  return { kind: "copy", label, src, dst };
}

function scaleWgsl(units: number, vec4: boolean, index: string, alpha: number): string {
  const type = vec4 ? "vec4f" : "f32";
  return `
@group(0) @binding(0) var<storage, read> x: array<${type}>;
@group(0) @binding(1) var<storage, read_write> y: array<${type}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${units}u) { return; }
  let alpha = ${f32Literal(alpha)}; // ${alpha}
  y[i] = alpha * x[i];
}`;
}

function scaleBackwardWgsl(
  units: number,
  vec4: boolean,
  index: string,
  alpha: number,
  accumulate: boolean,
): string {
  const type = vec4 ? "vec4f" : "f32";
  return `
@group(0) @binding(0) var<storage, read> dy: array<${type}>;
@group(0) @binding(1) var<storage, read_write> dx: array<${type}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${units}u) { return; }
  let alpha = ${f32Literal(alpha)}; // ${alpha}
  dx[i] = ${accumulate ? "dx[i] + " : ""}alpha * dy[i];
}`;
}

/**
 * Dispatches of an elementwise kernel over same-sized tensors, one per binding chunk; the last
 * tensor is the one written. `wgsl` gets the number of invocations (elements or vec4s).
 */
function elementwise(
  engine: Engine,
  kernelName: string,
  label: string,
  tensors: readonly Tensor[],
  wgsl: (units: number, vec4: boolean, index: string) => string,
): Command[] {
  const bindings = tensors.map((_, i) => i === tensors.length - 1 ? "rw" : "read" as const);
  return bindingChunks(engine, tensors[0].size).map((chunk) => {
    const vec4 = chunk.count % 4 === 0;
    const units = vec4 ? chunk.count / 4 : chunk.count;
    const grid = grid1d(units, WORKGROUP);
    const kernel = engine.kernel(kernelName, wgsl(units, vec4, grid.index), bindings);
    const views = tensors.map((t) => chunkView(engine, t, chunk));
    return engine.dispatch(label, kernel, views, grid.workgroups);
  });
}

/** y = α·x, elementwise. α is baked into the kernel (one pipeline per α and size). */
export function scale(tape: Tape, x: Tensor, alpha: number): Tensor {
  const engine = tape.engine;
  if (x.dtype !== "f32") throw new ShapeError(`scale: ${x} is not f32`);
  if (!Number.isFinite(Math.fround(alpha))) {
    throw new RangeError(`scale: α = ${alpha} is not finite in f32`);
  }
  x.assertLive();
  const y = tape.tensor(x.shape, `${alpha}·${x.label}`);
  tape.record({
    name: "scale",
    inputs: [x],
    outputs: [y],
    forward: elementwise(
      engine,
      "scale",
      "scale",
      [x, y],
      (units, vec4, index) => scaleWgsl(units, vec4, index, alpha),
    ),
    backward: (ctx) => {
      const dx = ctx.gradInput(0);
      if (!dx) return [];
      return elementwise(
        engine,
        "scale_backward",
        "scale backward",
        [ctx.gradOutput(0), dx.tensor],
        (units, vec4, index) => scaleBackwardWgsl(units, vec4, index, alpha, dx.accumulate),
      );
    },
  });
  return y;
}
