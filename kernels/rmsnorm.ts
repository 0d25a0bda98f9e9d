// RMS normalisation over the last dimension, as Hugging Face's LlamaRMSNorm (in f32):
//   r = 1/√(mean(x²) + ε),  x̂ = x·r,  y = w ⊙ x̂.
// Backward, per row, with g = dy ⊙ w:
//   dx = r·(g − x̂·mean(g ⊙ x̂))
//   dw = Σ_rows dy ⊙ x̂  (column sums: two-phase, fixed order, no atomics)
//
// A row kernel as kernels/row_norm.ts lays them out (as layernorm.ts): one invocation per row,
// vec4 loads when C allows, dw from per-block partial sums added in block order. x may exceed
// one binding: it is split into chunks of whole rows, each a multiple of the partial-sum block,
// so every block of rows lies in one chunk and the sums do not depend on the split.
import type { Command, Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { GradTarget, Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { chunkView, lcm, type Range, rowChunks, rowElements, rowGranule } from "./chunks.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";
import { floatLiteral } from "./literals.ts";
import {
  columnTotals,
  type RowDims,
  rowDims,
  rowPrelude,
  ROWS_PER_PARTIAL,
  store,
} from "./row_norm.ts";

const WORKGROUP = 64;

function forwardWgsl(dims: RowDims, eps: number, index: string): string {
  return `${rowPrelude(dims)}
const EPS: f32 = ${floatLiteral(eps)};
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let row = ${index};
  if (row >= ROWS) { return; }
  let base = row * VECS;
  var squares = V(0.0);
  for (var j = 0u; j < VECS; j++) {
    let v = x[base + j];
    squares += v * v;
  }
  let r = 1.0 / sqrt(total(squares) / C + EPS);
  for (var j = 0u; j < VECS; j++) {
    y[base + j] = weight[j] * (x[base + j] * r);
  }
  rstd[row] = r;
}`;
}

function inputGradWgsl(dims: RowDims, accumulate: boolean, index: string): string {
  return `${rowPrelude(dims)}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let row = ${index};
  if (row >= ROWS) { return; }
  let base = row * VECS;
  let r = rstd[row];
  var sum_g_xhat = V(0.0);
  for (var j = 0u; j < VECS; j++) {
    sum_g_xhat += dy[base + j] * weight[j] * (x[base + j] * r);
  }
  let mean_g_xhat = total(sum_g_xhat) / C;
  for (var j = 0u; j < VECS; j++) {
    let g = dy[base + j] * weight[j];
    let xhat = x[base + j] * r;
    dx[base + j] = ${accumulate ? "dx[base + j] + " : ""}r * (g - xhat * mean_g_xhat);
  }
}`;
}

/**
 * Phase 1 of dw: invocation (row block, column group) sums dy⊙x̂ over its block of rows, in row
 * order, for `group` consecutive vector columns (sharing the per-row load of rstd). Blocks are
 * numbered from `firstBlock`, the chunk's first, in the output; consecutive invocations take
 * consecutive column groups of one block, so SIMD lanes run loops of equal length.
 */
function columnPartialsWgsl(
  dims: RowDims,
  firstBlock: number,
  group: number,
  accumulate: boolean,
  index: string,
): string {
  const blocks = Math.ceil(dims.rows / ROWS_PER_PARTIAL);
  const groups = dims.vecs / group;
  const columns = Array.from({ length: group }, (_, k) => k);
  const each = (line: (k: number) => string, indent = "\n    ") => columns.map(line).join(indent);
  return `${rowPrelude(dims)}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${blocks * groups}u) { return; }
  let block = i / ${groups}u;
  let first = (i % ${groups}u) * ${group}u;
  ${each((k) => `var dw${k} = V(0.0);`, "\n  ")}
  let last = min((block + 1u) * ${ROWS_PER_PARTIAL}u, ROWS);
  for (var row = block * ${ROWS_PER_PARTIAL}u; row < last; row++) {
    let at = row * VECS + first;
    let r = rstd[row];
    ${each((k) => `dw${k} += dy[at + ${k}u] * (x[at + ${k}u] * r);`)}
  }
  let out = (${firstBlock}u + block) * VECS + first;
  ${each((k) => store("dweight", { accumulate }, `out + ${k}u`, `dw${k}`), "\n  ")}
}`;
}

export interface RmsNormOptions {
  /** Split as if a binding could hold at most this many bytes (tests of the chunked path). */
  maxBindingBytes?: number;
}

/** y = w ⊙ x/√(mean(x²) + eps) over the last dimension of x (HF LlamaRMSNorm). Saves x. */
export function rmsNorm(
  tape: Tape,
  x: Tensor,
  weight: Tensor,
  eps: number,
  opts: RmsNormOptions = {},
): Tensor {
  const cols = x.shape[x.shape.length - 1];
  if (weight.shape.length !== 1 || weight.shape[0] !== cols) {
    throw new ShapeError(`rmsNorm: ${weight} must have shape [${cols}] to normalise ${x}`);
  }
  if (x.dtype !== "f32" || weight.dtype !== "f32") {
    throw new ShapeError(`rmsNorm: ${x} and ${weight} must be f32`);
  }
  if (!(eps >= 0 && Number.isFinite(eps))) {
    throw new RangeError(`rmsNorm: eps ${eps} must be finite and ≥ 0`);
  }
  const engine = tape.engine;
  const whole = rowDims(x.size / cols, cols);
  // Chunks start at a block of the dw sums and at a bindable offset of rstd (one f32 per row).
  const align = engine.limits.minStorageBufferOffsetAlignment;
  const quantum = lcm(ROWS_PER_PARTIAL, rowGranule(align, 1));
  const maxBytes = opts.maxBindingBytes ?? engine.limits.maxStorageBufferBindingSize;
  const chunks = rowChunks(engine, whole.rows, cols, maxBytes, `rmsNorm ${x}`, quantum);
  const y = tape.tensor(x.shape, `rmsnorm(${x.label})`);
  const rstd = tape.tensor([whole.rows], `rmsnorm rstd(${x.label})`);
  const rowsOf = (t: Tensor, chunk: Range) => chunkRows(engine, t, chunk, t === rstd ? 1 : cols);
  const perChunk = (build: (chunk: Range, dims: RowDims) => Command): Command[] =>
    chunks.map((chunk) => build(chunk, rowDims(chunk[1] - chunk[0], cols)));
  tape.record({
    name: "rmsNorm",
    inputs: [x, weight],
    outputs: [y],
    forward: perChunk((chunk, dims) => {
      const grid = grid1d(dims.rows, WORKGROUP);
      const kernel = declareKernel(engine, "rmsnorm", [
        ["x", "read", "array<V>"],
        ["weight", "read", "array<V>"],
        ["y", "rw", "array<V>"],
        ["rstd", "rw", "array<f32>"],
      ], forwardWgsl(dims, eps, grid.index));
      const resources = [rowsOf(x, chunk), weight, rowsOf(y, chunk), rowsOf(rstd, chunk)];
      return engine.dispatch("rmsnorm", kernel, resources, grid.workgroups);
    }),
    backward: (ctx) => {
      const dy = ctx.gradOutput(0);
      const [dx, dweight] = [ctx.gradInput(0), ctx.gradInput(1)];
      const commands: Command[] = [];
      if (dx) {
        commands.push(...perChunk((chunk, dims) => {
          const grid = grid1d(dims.rows, WORKGROUP);
          const kernel = declareKernel(engine, "rmsnorm_backward_x", [
            ["x", "read", "array<V>"],
            ["weight", "read", "array<V>"],
            ["rstd", "read", "array<f32>"],
            ["dy", "read", "array<V>"],
            ["dx", "rw", "array<V>"],
          ], inputGradWgsl(dims, dx.accumulate, grid.index));
          const resources = [x, weight, rstd, dy, dx.tensor].map((t) =>
            t === weight ? t : rowsOf(t, chunk)
          );
          return engine.dispatch("rmsnorm backward dx", kernel, resources, grid.workgroups);
        }));
      }
      if (dweight) {
        commands.push(...weightGrad(tape, { x, rstd, dy }, chunks, whole, dweight));
      }
      return commands;
    },
  });
  return y;
}

/** Rows `chunk` of a tensor of `cols` columns: the tensor itself when the chunk covers it. */
function chunkRows(engine: Engine, t: Tensor, chunk: Range, cols: number): Tensor {
  return chunkView(engine, t, rowElements(chunk, cols));
}

/**
 * dw = Σ_rows dy⊙x̂. One block of rows writes straight into the gradient; more rows go through
 * per-block partial sums (every chunk writing its own blocks) and a pass adding them in order.
 */
function weightGrad(
  tape: Tape,
  saved: { x: Tensor; rstd: Tensor; dy: Tensor },
  chunks: Range[],
  whole: RowDims,
  target: GradTarget,
): Command[] {
  const engine = tape.engine;
  const { cols, vecs } = whole;
  const blocks = Math.ceil(whole.rows / ROWS_PER_PARTIAL);
  const partials = blocks === 1
    ? target.tensor
    : tape.tensor([blocks, cols], `rmsnorm dweight partials(${saved.x.label})`);
  const group = [4, 2, 1].find((k) => vecs % k === 0)!;
  const commands: Command[] = chunks.map((chunk) => {
    const dims = rowDims(chunk[1] - chunk[0], cols);
    const grid = grid1d(Math.ceil(dims.rows / ROWS_PER_PARTIAL) * vecs / group, WORKGROUP);
    const firstBlock = chunk[0] / ROWS_PER_PARTIAL;
    const accumulate = blocks === 1 && target.accumulate;
    const kernel = declareKernel(engine, "rmsnorm_backward_weight", [
      ["x", "read", "array<V>"],
      ["rstd", "read", "array<f32>"],
      ["dy", "read", "array<V>"],
      ["dweight", "rw", "array<V>"],
    ], columnPartialsWgsl(dims, firstBlock, group, accumulate, grid.index));
    const { x, rstd, dy } = saved;
    const resources = [
      chunkRows(engine, x, chunk, cols),
      chunkRows(engine, rstd, chunk, 1),
      chunkRows(engine, dy, chunk, cols),
      partials,
    ];
    return engine.dispatch("rmsnorm backward dweight", kernel, resources, grid.workgroups);
  });
  if (blocks === 1) return commands;
  commands.push(columnTotals(
    engine,
    "rmsnorm_backward_weight_totals",
    "rmsnorm backward dweight totals",
    whole,
    blocks,
    [{ name: "dweight", partials, target }],
  ));
  return commands;
}
