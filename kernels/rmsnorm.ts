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
import {
  columnPartials,
  columnTotals,
  type EachColumn,
  type PartialSumsCode,
  type RowDims,
  rowDims,
  rowPass,
  ROWS_PER_PARTIAL,
  store,
} from "./row_norm.ts";

/** r from mean(x²) in one pass over the row, then y; r is saved for backward. */
const FORWARD = `  var squares = V(0.0);
  for (var j = 0u; j < VECS; j++) {
    let v = x[base + j];
    squares += v * v;
  }
  let r = 1.0 / sqrt(total(squares) / C + EPS);
  for (var j = 0u; j < VECS; j++) {
    y[base + j] = weight[j] * (x[base + j] * r);
  }
  rstd[row] = r;`;

function inputGradBody(accumulate: boolean): string {
  return `  let r = rstd[row];
  var sum_g_xhat = V(0.0);
  for (var j = 0u; j < VECS; j++) {
    sum_g_xhat += dy[base + j] * weight[j] * (x[base + j] * r);
  }
  let mean_g_xhat = total(sum_g_xhat) / C;
  for (var j = 0u; j < VECS; j++) {
    let g = dy[base + j] * weight[j];
    let xhat = x[base + j] * r;
    dx[base + j] = ${accumulate ? "dx[base + j] + " : ""}r * (g - xhat * mean_g_xhat);
  }`;
}

/** Phase 1 of dw, per row: dy⊙x̂, sharing the load of rstd (see columnPartials). */
function columnPartialsCode(accumulate: boolean) {
  return (each: EachColumn): PartialSumsCode => ({
    declare: each((k) => `var dw${k} = V(0.0);`, "\n  "),
    perRow: [
      "let r = rstd[row];",
      each((k) => `dw${k} += dy[at + ${k}u] * (x[at + ${k}u] * r);`),
    ],
    stores: [each((k) => store("dweight", { accumulate }, `out + ${k}u`, `dw${k}`), "\n  ")],
  });
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
  tape.record({
    name: "rmsNorm",
    inputs: [x, weight],
    outputs: [y],
    forward: chunks.map((chunk) =>
      rowPass(
        engine,
        {
          name: "rmsnorm",
          label: "rmsnorm",
          dims: rowDims(chunk[1] - chunk[0], cols),
          bindings: [
            ["x", "read", "array<V>"],
            ["weight", "read", "array<V>"],
            ["y", "rw", "array<V>"],
            ["rstd", "rw", "array<f32>"],
          ],
          resources: [rowsOf(x, chunk), weight, rowsOf(y, chunk), rowsOf(rstd, chunk)],
        },
        FORWARD,
        eps,
      )
    ),
    backward: (ctx) => {
      const dy = ctx.gradOutput(0);
      const [dx, dweight] = [ctx.gradInput(0), ctx.gradInput(1)];
      const commands: Command[] = [];
      if (dx) {
        commands.push(...chunks.map((chunk) =>
          rowPass(engine, {
            name: "rmsnorm_backward_x",
            label: "rmsnorm backward dx",
            dims: rowDims(chunk[1] - chunk[0], cols),
            bindings: [
              ["x", "read", "array<V>"],
              ["weight", "read", "array<V>"],
              ["rstd", "read", "array<f32>"],
              ["dy", "read", "array<V>"],
              ["dx", "rw", "array<V>"],
            ],
            resources: [x, weight, rstd, dy, dx.tensor].map((t) =>
              t === weight ? t : rowsOf(t, chunk)
            ),
          }, inputGradBody(dx.accumulate))
        ));
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
  const { cols } = whole;
  const blocks = Math.ceil(whole.rows / ROWS_PER_PARTIAL);
  const partials = blocks === 1
    ? target.tensor
    : tape.tensor([blocks, cols], `rmsnorm dweight partials(${saved.x.label})`);
  // One block writes the gradient itself (adding to it when asked); more write their partials.
  const code = columnPartialsCode(blocks === 1 && target.accumulate);
  const { x, rstd, dy } = saved;
  const commands = chunks.map((chunk) =>
    columnPartials(
      engine,
      {
        name: "rmsnorm_backward_weight",
        label: "rmsnorm backward dweight",
        dims: rowDims(chunk[1] - chunk[0], cols),
        bindings: [
          ["x", "read", "array<V>"],
          ["rstd", "read", "array<f32>"],
          ["dy", "read", "array<V>"],
          ["dweight", "rw", "array<V>"],
        ],
        resources: [
          chunkRows(engine, x, chunk, cols),
          chunkRows(engine, rstd, chunk, 1),
          chunkRows(engine, dy, chunk, cols),
          partials,
        ],
      },
      chunk[0] / ROWS_PER_PARTIAL,
      code,
    )
  );
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
