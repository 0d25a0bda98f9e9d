// Row softmax over the last dimension, numerically stable (the row max is subtracted):
//   y_i = exp(x_i − m) / Σ_j exp(x_j − m),   m = max_j x_j
// Backward: dx = y ⊙ (dy − Σ_j dy_j·y_j).
//
// The max and the sum come from one pass (online softmax: the running sum is rescaled when the
// max grows), the outputs from a second. Short rows, or many rows, get one invocation each;
// a few long rows one 64-invocation workgroup each, whose lanes combine their partial
// (max, sum) in a fixed tree. Rows are read as vec4 when the row length allows. Tensors over the
// binding limit are processed in row chunks (logits [B·T, 50257] are ~200 MB per 1024 tokens).
import type { Command } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { type Range, rowChunks } from "./chunks.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";

const WORKGROUP = 64;
/** Smaller than any f32 a softmax meets; exp(LOWEST − m) is 0 for every real max m. */
const LOWEST = "-3.4028235e38";

/** How a row is read: as vec4 (length a multiple of 4) or as f32. */
interface Layout {
  type: "vec4f" | "f32";
  /** Elements of `type` per row. */
  width: number;
}

function layout(cols: number): Layout {
  return cols % 4 === 0 ? { type: "vec4f", width: cols / 4 } : { type: "f32", width: cols };
}

/**
 * lavapipe ends every loop of an invocation after 65535 iterations in total (gallivm's
 * LP_MAX_TGSI_LOOP_ITERATIONS, shared by all loops of a shader): results past it are silently
 * wrong. Each kernel runs two loops over its row elements, so this bounds them per invocation.
 */
const MAX_LOOP_ITERATIONS = 32000;

/**
 * One invocation per row (no barriers; measured 1.3–2.3x faster than a workgroup per row once
 * rows fill the lanes, e.g. 1024×8192: 18 vs 41 ms, 512×8192: 18 vs 38 ms) for short rows and
 * for many rows; one workgroup per row otherwise (4 rows of 50257 would leave 60 lanes idle).
 */
function rowPerInvocation(rows: number, cols: number): boolean {
  if (cols <= 256) return true;
  return rows >= 256 && layout(cols).width <= MAX_LOOP_ITERATIONS;
}

/** WGSL: the largest and the sum of the components of a row element. */
function helpers(l: Layout): string {
  return l.type === "vec4f"
    ? `fn largest(v: vec4f) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }
fn total(v: vec4f) -> f32 { return (v.x + v.y) + (v.z + v.w); }`
    : `fn largest(v: f32) -> f32 { return v; }
fn total(v: f32) -> f32 { return v; }`;
}

/**
 * The body shared by both kernels: `first`, `step` and `row` are defined by the caller; the lane
 * visits elements first, first+step, ... of the row. `reduce` turns the lane's partial
 * results into the row's (identity for one invocation per row).
 */
function forwardBody(l: Layout, reduce: string): string {
  return `
  let base = row * ${l.width}u;
  var m = ${LOWEST};
  var sum = 0.0;
  for (var i = first; i < ${l.width}u; i += step) {
    let v = x[base + i];
    let grown = max(m, largest(v));
    sum = sum * exp(m - grown) + total(exp(v - grown));
    m = grown;
  }
${reduce}
  let inv = 1.0 / sum;
  for (var i = first; i < ${l.width}u; i += step) {
    y[base + i] = exp(x[base + i] - m) * inv;
  }`;
}

function backwardBody(l: Layout, reduce: string, accumulate: boolean): string {
  const product = l.type === "vec4f"
    ? "dot(dy[base + i], y[base + i])"
    : "dy[base + i] * y[base + i]";
  return `
  let base = row * ${l.width}u;
  var sum = 0.0;
  for (var i = first; i < ${l.width}u; i += step) {
    sum += ${product};
  }
${reduce}
  for (var i = first; i < ${l.width}u; i += step) {
    dx[base + i] = ${accumulate ? "dx[base + i] + " : ""}y[base + i] * (dy[base + i] - sum);
  }`;
}

/** Combines the 64 lanes' partial results pairwise in a fixed tree; lane 0's slot is the row's. */
function treeReduce(combine: string, slots: string[]): string {
  return `
  ${slots.map((v) => `${v}Part[lane] = ${v};`).join(" ")}
  for (var half = ${WORKGROUP / 2}u; half > 0u; half >>= 1u) {
    workgroupBarrier();
    if (lane < half) {
${combine}
    }
  }
  workgroupBarrier();
  ${slots.map((v) => `${v} = ${v}Part[0];`).join(" ")}`;
}

const FORWARD_COMBINE = `
      let m2 = mPart[lane + half];
      let grown = max(mPart[lane], m2);
      sumPart[lane] = sumPart[lane] * exp(mPart[lane] - grown) + sumPart[lane + half] * exp(m2 - grown);
      mPart[lane] = grown;`;

const BACKWARD_COMBINE = `
      sumPart[lane] = sumPart[lane] + sumPart[lane + half];`;

/** A kernel over `rows` rows, with one invocation or one workgroup per row. */
function kernelWgsl(
  rows: number,
  cols: number,
  body: (reduce: string) => string,
  slots: string[],
  combine: string,
  index: string,
  rowsPerGroupX: number,
): string {
  const l = layout(cols);
  if (rowPerInvocation(rows, cols)) {
    return `
${helpers(l)}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let row = ${index};
  if (row >= ${rows}u) { return; }
  let first = 0u;
  let step = 1u;${body("")}
}`;
  }
  return `
${helpers(l)}
${slots.map((v) => `var<workgroup> ${v}Part: array<f32, ${WORKGROUP}>;`).join("\n")}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lane: u32) {
  let row = wg.x + wg.y * ${rowsPerGroupX}u;
  if (row >= ${rows}u) { return; }
  let first = lane;
  let step = ${WORKGROUP}u;${body(treeReduce(combine, slots))}
}`;
}

/** The grid for `rows` rows: an invocation or a workgroup per row, as `kernelWgsl` chose. */
function rowGrid(rows: number, cols: number): { workgroups: [number, number]; index: string } {
  if (rowPerInvocation(rows, cols)) return grid1d(rows, WORKGROUP);
  const x = Math.min(rows, 65535);
  return { workgroups: [x, Math.ceil(rows / x)], index: "" };
}

/** y = softmax(x) over the last dimension. Saves y for backward. */
export function softmax(tape: Tape, x: Tensor): Tensor {
  if (x.dtype !== "f32") throw new ShapeError(`softmax: ${x} must be f32`);
  const engine = tape.engine;
  const cols = x.shape[x.shape.length - 1];
  const rows = x.size / cols;
  if (Math.ceil(layout(cols).width / WORKGROUP) > MAX_LOOP_ITERATIONS) {
    throw new ShapeError(
      `softmax: rows of ${cols} elements in ${x} are too long for one workgroup`,
    );
  }
  const y = tape.tensor(x.shape, `softmax(${x.label})`);
  const array = `array<${layout(cols).type}>`;
  const chunks = rowChunks(
    engine,
    rows,
    cols,
    engine.limits.maxStorageBufferBindingSize,
    "softmax",
  );
  const view = (t: Tensor, [start, end]: Range) =>
    chunks.length === 1 ? t : engine.view(t, start * cols, [end - start, cols]);

  const forward = chunks.map((chunk) => {
    const count = chunk[1] - chunk[0];
    const grid = rowGrid(count, cols);
    const code = kernelWgsl(
      count,
      cols,
      (reduce) => forwardBody(layout(cols), reduce),
      ["m", "sum"],
      FORWARD_COMBINE,
      grid.index,
      grid.workgroups[0],
    );
    const kernel = declareKernel(
      engine,
      "softmax",
      [["x", "read", array], ["y", "rw", array]],
      code,
    );
    return engine.dispatch("softmax", kernel, [view(x, chunk), view(y, chunk)], grid.workgroups);
  });

  tape.record({
    name: "softmax",
    inputs: [x],
    outputs: [y],
    forward,
    backward: (ctx): Command[] => {
      const dx = ctx.gradInput(0);
      if (!dx) return [];
      const dy = ctx.gradOutput(0);
      return chunks.map((chunk) => {
        const count = chunk[1] - chunk[0];
        const grid = rowGrid(count, cols);
        const code = kernelWgsl(
          count,
          cols,
          (reduce) => backwardBody(layout(cols), reduce, dx.accumulate),
          ["sum"],
          BACKWARD_COMBINE,
          grid.index,
          grid.workgroups[0],
        );
        const kernel = declareKernel(engine, "softmax_backward", [
          ["y", "read", array],
          ["dy", "read", array],
          ["dx", "rw", array],
        ], code);
        return engine.dispatch(
          "softmax backward",
          kernel,
          [view(y, chunk), view(dy, chunk), view(dx.tensor, chunk)],
          grid.workgroups,
        );
      });
    },
  });
  return y;
}
