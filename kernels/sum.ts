// Deterministic reductions: column sums over all leading dimensions (`sumRows`, the bias
// gradient), the total `sum` and the `mean`. WGSL has no float atomics, and the result must not
// depend on scheduling, so each reduction is a fixed tree: a pass where every invocation adds a
// fixed run of consecutive rows (or elements) in order, repeated on the partial sums until one
// is left. The last pass scales (for the mean) and writes or adds into the target.
import type { Command, Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { GradTarget, Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { type Range, rowChunks } from "./chunks.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";
import { floatLiteral } from "./literals.ts";

const WORKGROUP = 64;
/** Rows one invocation adds per pass of a column sum. */
const ROWS_PER_INVOCATION = 64;
/** Elements one invocation adds per pass of a total sum (as runs of vec4 where aligned). */
const ELEMENTS_PER_INVOCATION = 256;

export interface ReduceOptions {
  label?: string;
  /** Split as if a binding could hold at most this many bytes (tests of the chunked path). */
  maxBindingBytes?: number;
}

function viewRows(engine: Engine, x: Tensor, cols: number, [r0, r1]: Range): Tensor {
  if (r0 === 0 && (r1 - r0) * cols === x.size) return x;
  return engine.view(x, r0 * cols, [(r1 - r0) * cols], `${x.label}[rows ${r0}:${r1}]`);
}

/**
 * One column-sum pass over `rows` × `cols`: partial row p (at `outRow0 + p` of `out`) is the sum
 * of rows p·run .. (p+1)·run − 1, in order; the last pass may add it to what is there.
 */
function columnPassWgsl(
  rows: number,
  cols: number,
  run: number,
  outRow0: number,
  accumulate: boolean,
): string {
  const vec = cols % 4 === 0;
  const lanes = vec ? cols / 4 : cols;
  const partials = Math.ceil(rows / run);
  const grid = grid1d(lanes * partials, WORKGROUP);
  const type = vec ? "vec4f" : "f32";
  const target = `(${outRow0}u + p) * ${lanes}u + c`;
  return `
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${grid.index};
  if (i >= ${lanes * partials}u) { return; }
  let c = i % ${lanes}u;
  let p = i / ${lanes}u;
  let end = min(${rows}u, (p + 1u) * ${run}u);
  var total = ${type}(0.0);
  for (var r = p * ${run}u; r < end; r++) { total += x[r * ${lanes}u + c]; }
  out[${target}] = ${accumulate ? `out[${target}] + ` : ""}total;
}`;
}

function columnPass(
  engine: Engine,
  label: string,
  x: Tensor,
  rows: number,
  cols: number,
  out: Tensor,
  outRow0: number,
  accumulate: boolean,
): Command {
  const lanes = cols % 4 === 0 ? cols / 4 : cols;
  const grid = grid1d(lanes * Math.ceil(rows / ROWS_PER_INVOCATION), WORKGROUP);
  const code = columnPassWgsl(rows, cols, ROWS_PER_INVOCATION, outRow0, accumulate);
  const array = `array<${cols % 4 === 0 ? "vec4f" : "f32"}>`;
  const kernel = declareKernel(
    engine,
    "sum rows",
    [["x", "read", array], ["out", "rw", array]],
    code,
  );
  return engine.dispatch(label, kernel, [x, out], grid.workgroups);
}

/**
 * Commands writing the column sums of x viewed as [rows, cols] into `target` ([cols]), or adding
 * them when it accumulates: the bias gradient of a matmul. Partial sums live in tensors owned by
 * `tape`.
 */
export function sumRowsCommands(
  tape: Tape,
  x: Tensor,
  rows: number,
  cols: number,
  target: GradTarget,
  opts: ReduceOptions = {},
): Command[] {
  const engine = tape.engine;
  const label = opts.label ?? "sum rows";
  const maxBindingBytes = opts.maxBindingBytes ?? engine.limits.maxStorageBufferBindingSize;
  if (x.size !== rows * cols || target.tensor.size !== cols) {
    throw new ShapeError(
      `${label}: ${x} is not [${rows}, ${cols}] or ${target.tensor} not [${cols}]`,
    );
  }
  const commands: Command[] = [];
  let current = x, currentRows = rows;
  for (;;) {
    const chunks = rowChunks(engine, currentRows, cols, maxBindingBytes, label);
    if (chunks.length === 1 && currentRows <= ROWS_PER_INVOCATION) {
      commands.push(
        columnPass(engine, label, current, currentRows, cols, target.tensor, 0, target.accumulate),
      );
      return commands;
    }
    // Each binding-sized chunk of rows fills its own run of partial rows.
    const partialCounts = chunks.map(([r0, r1]) => Math.ceil((r1 - r0) / ROWS_PER_INVOCATION));
    const partialRows = partialCounts.reduce((x, y) => x + y);
    const partials = tape.tensor([partialRows, cols], `${label} partials`);
    let outRow = 0;
    chunks.forEach((chunk, i) => {
      const view = viewRows(engine, current, cols, chunk);
      const chunkRows = chunk[1] - chunk[0];
      commands.push(columnPass(engine, label, view, chunkRows, cols, partials, outRow, false));
      outRow += partialCounts[i];
    });
    current = partials;
    currentRows = partialRows;
  }
}

/** Whether a broadcast over n elements in rows of `cols` can write whole vec4s. */
function vectorBroadcast(n: number, cols: number): boolean {
  return n % 4 === 0 && (cols === 1 || cols % 4 === 0);
}

/** Broadcast backward of a sum: dx (+)= scale · dy[c] (column sums) or scale · dy[0] (totals). */
function broadcastWgsl(
  n: number,
  cols: number,
  scale: number,
  accumulate: boolean,
  index: string,
): string {
  const vec = vectorBroadcast(n, cols);
  const type = vec ? "vec4f" : "f32";
  const count = vec ? n / 4 : n;
  const source = cols === 1
    ? `${type}(dy[0])`
    : vec
    ? `vec4f(dy[c], dy[c + 1u], dy[c + 2u], dy[c + 3u])`
    : `dy[c]`;
  const column = cols === 1 ? "" : `let c = ${vec ? `(i * 4u) % ${cols}u` : `i % ${cols}u`};`;
  return `
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${count}u) { return; }
  ${column}
  let g = ${scale === 1 ? "" : `${floatLiteral(scale)} * `}${source};
  dx[i] = ${accumulate ? "dx[i] + " : ""}g;
}`;
}

function broadcastCommands(
  engine: Engine,
  label: string,
  dy: Tensor,
  cols: number,
  scale: number,
  target: GradTarget,
  maxBindingBytes: number,
): Command[] {
  const dx = target.tensor;
  // Chunks of whole rows (of 4 elements for a total, so vec4 stays aligned).
  const rowWidth = cols === 1 ? 4 : cols;
  const chunkRows = rowChunks(
    engine,
    Math.ceil(dx.size / rowWidth),
    rowWidth,
    maxBindingBytes,
    `${label} backward`,
  );
  return chunkRows.map(([r0, r1]) => {
    const start = r0 * rowWidth, end = Math.min(dx.size, r1 * rowWidth);
    const view = start === 0 && end === dx.size
      ? dx
      : engine.view(dx, start, [end - start], `${dx.label}[${start}:${end}]`);
    const n = end - start;
    const vec = vectorBroadcast(n, cols);
    const grid = grid1d(vec ? n / 4 : n, WORKGROUP);
    const code = broadcastWgsl(n, cols, scale, target.accumulate, grid.index);
    const kernel = declareKernel(engine, `${label} backward`, [
      ["dy", "read", "array<f32>"],
      ["dx", "rw", `array<${vec ? "vec4f" : "f32"}>`],
    ], code);
    return engine.dispatch(`${label} backward`, kernel, [dy, view], grid.workgroups);
  });
}

/** Column sums over all leading dimensions: x [.., N] → [N]. */
export function sumRows(tape: Tape, x: Tensor, opts: ReduceOptions = {}): Tensor {
  const engine = tape.engine;
  const label = opts.label ?? "sumRows";
  if (x.dtype !== "f32") throw new ShapeError(`${label}(${x}): needs f32`);
  const cols = x.shape[x.shape.length - 1];
  const rows = x.size / cols;
  const maxBindingBytes = opts.maxBindingBytes ?? engine.limits.maxStorageBufferBindingSize;
  const y = tape.tensor([cols], `${label}(${x.label})`);
  tape.record({
    name: "sumRows",
    inputs: [x],
    outputs: [y],
    forward: sumRowsCommands(tape, x, rows, cols, { tensor: y, accumulate: false }, {
      label,
      maxBindingBytes,
    }),
    backward: (ctx) => {
      const dx = ctx.gradInput(0);
      if (!dx) return [];
      return broadcastCommands(engine, label, ctx.gradOutput(0), cols, 1, dx, maxBindingBytes);
    },
  });
  return y;
}

/** One pass of a total: out[outStart + p] = (sum of x[p·run ..], in order), times `scale`. */
function totalPassWgsl(
  n: number,
  run: number,
  outStart: number,
  scale: number,
  accumulate: boolean,
): string {
  const vec = n % 4 === 0;
  const partials = Math.ceil(n / run);
  const grid = grid1d(partials, WORKGROUP);
  const step = vec ? run / 4 : run;
  const count = vec ? n / 4 : n;
  const sum = vec ? "dot(total, vec4f(1.0))" : "total";
  const target = `${outStart}u + p`;
  const value = scale === 1 ? sum : `(${sum}) * ${floatLiteral(scale)}`;
  return `
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let p = ${grid.index};
  if (p >= ${partials}u) { return; }
  let end = min(${count}u, (p + 1u) * ${step}u);
  var total = ${vec ? "vec4f" : "f32"}(0.0);
  for (var i = p * ${step}u; i < end; i++) { total += x[i]; }
  out[${target}] = ${accumulate ? `out[${target}] + ` : ""}${value};
}`;
}

/** Commands writing (or adding) scale · Σ x into target [1]. */
function totalCommands(
  tape: Tape,
  label: string,
  x: Tensor,
  scale: number,
  target: GradTarget,
  maxBindingBytes: number,
): Command[] {
  const engine = tape.engine;
  const commands: Command[] = [];
  const pass = (input: Tensor, n: number, out: Tensor, outStart: number, last: boolean) => {
    const run = ELEMENTS_PER_INVOCATION;
    const code = totalPassWgsl(n, run, outStart, last ? scale : 1, last && target.accumulate);
    const kernel = declareKernel(engine, "sum", [
      ["x", "read", `array<${n % 4 === 0 ? "vec4f" : "f32"}>`],
      ["out", "rw", "array<f32>"],
    ], code);
    commands.push(
      engine.dispatch(
        label,
        kernel,
        [input, out],
        grid1d(Math.ceil(n / run), WORKGROUP).workgroups,
      ),
    );
  };
  let current = x, n = x.size;
  for (;;) {
    // Binding-sized chunks of whole vec4s, each filling its own run of partial sums.
    const chunks = rowChunks(engine, Math.ceil(n / 4), 4, maxBindingBytes, label)
      .map(([r0, r1]) => [4 * r0, Math.min(n, 4 * r1)]);
    if (chunks.length === 1 && n <= ELEMENTS_PER_INVOCATION) break;
    const counts = chunks.map(([start, end]) => Math.ceil((end - start) / ELEMENTS_PER_INVOCATION));
    const partials = tape.tensor([counts.reduce((x, y) => x + y)], `${label} partials`);
    let outStart = 0;
    chunks.forEach(([start, end], i) => {
      const view = start === 0 && end === current.size
        ? current
        : engine.view(current, start, [end - start], `${current.label}[${start}:${end}]`);
      pass(view, end - start, partials, outStart, false);
      outStart += counts[i];
    });
    current = partials;
    n = partials.size;
  }
  pass(current, n, target.tensor, 0, true);
  return commands;
}

function totalOp(tape: Tape, x: Tensor, name: "sum" | "mean", opts: ReduceOptions): Tensor {
  const engine = tape.engine;
  const label = opts.label ?? name;
  if (x.dtype !== "f32") throw new ShapeError(`${label}(${x}): needs f32`);
  const maxBindingBytes = opts.maxBindingBytes ?? engine.limits.maxStorageBufferBindingSize;
  const scale = name === "mean" ? 1 / x.size : 1;
  const y = tape.tensor([1], `${label}(${x.label})`);
  tape.record({
    name,
    inputs: [x],
    outputs: [y],
    forward: totalCommands(
      tape,
      label,
      x,
      scale,
      { tensor: y, accumulate: false },
      maxBindingBytes,
    ),
    backward: (ctx) => {
      const dx = ctx.gradInput(0);
      if (!dx) return [];
      return broadcastCommands(engine, label, ctx.gradOutput(0), 1, scale, dx, maxBindingBytes);
    },
  });
  return y;
}

/** Σ x over all elements → [1]. */
export function sum(tape: Tape, x: Tensor, opts: ReduceOptions = {}): Tensor {
  return totalOp(tape, x, "sum", opts);
}

/** Mean of all elements → [1]. */
export function mean(tape: Tape, x: Tensor, opts: ReduceOptions = {}): Tensor {
  return totalOp(tape, x, "mean", opts);
}
