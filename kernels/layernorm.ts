// Layer normalisation over the last dimension, as PyTorch's F.layer_norm:
//   μ = mean(x),  σ² = mean((x − μ)²) (biased),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,
//   y = x̂ ⊙ w + b.
// Backward, per row, with g = dy ⊙ w:
//   dx = r·(g − mean(g) − x̂·mean(g ⊙ x̂))
//   dw = Σ_rows dy ⊙ x̂,  db = Σ_rows dy  (column sums: two-phase, fixed order, no atomics)
//
// A row kernel as kernels/row_norm.ts lays them out: one invocation per row, vec4 loads when C
// allows, the column sums from per-block partials added in block order.
import type { Binding } from "../engine/bindings.ts";
import type { Command } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import {
  type ColumnOutput,
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

/** Two passes over the row for the statistics (mean, then squared deviations: no cancellation). */
const FORWARD = `  var sum = V(0.0);
  for (var j = 0u; j < VECS; j++) { sum += x[base + j]; }
  let mu = total(sum) / C;
  var squares = V(0.0);
  for (var j = 0u; j < VECS; j++) {
    let d = x[base + j] - mu;
    squares += d * d;
  }
  let r = 1.0 / sqrt(total(squares) / C + EPS);
  for (var j = 0u; j < VECS; j++) {
    y[base + j] = (x[base + j] - mu) * r * weight[j] + bias[j];
  }
  mean[row] = mu;
  rstd[row] = r;`;

function inputGradBody(accumulate: boolean): string {
  return `  let mu = mean[row];
  let r = rstd[row];
  var sum_g = V(0.0);
  var sum_g_xhat = V(0.0);
  for (var j = 0u; j < VECS; j++) {
    let g = dy[base + j] * weight[j];
    sum_g += g;
    sum_g_xhat += g * (x[base + j] - mu) * r;
  }
  let mean_g = total(sum_g) / C;
  let mean_g_xhat = total(sum_g_xhat) / C;
  for (var j = 0u; j < VECS; j++) {
    let g = dy[base + j] * weight[j];
    let xhat = (x[base + j] - mu) * r;
    dx[base + j] = ${accumulate ? "dx[base + j] + " : ""}r * (g - mean_g - xhat * mean_g_xhat);
  }`;
}

/** The column sums wanted: dw = Σ dy⊙x̂ and/or db = Σ dy, each with where it goes. */
interface ColumnSums {
  dweight: ColumnOutput | null;
  dbias: ColumnOutput | null;
}

/** The column sums wanted, by name, in binding order (dweight before dbias). */
function columnsWanted(sums: ColumnSums): [string, ColumnOutput][] {
  return [["dweight", sums.dweight], ["dbias", sums.dbias]]
    .filter((entry): entry is [string, ColumnOutput] => entry[1] !== null);
}

/**
 * Phase 1 of the column sums, per row: dy⊙x̂ and/or dy, sharing the loads of mean and rstd (see
 * columnPartials).
 */
function columnPartialsCode(sums: ColumnSums) {
  const { dweight, dbias } = sums;
  return (each: EachColumn): PartialSumsCode => ({
    declare: each((k) => `var dw${k} = V(0.0);\n  var db${k} = V(0.0);`, "\n  "),
    perRow: [
      "let mu = mean[row];",
      "let r = rstd[row];",
      each((k) => `let d${k} = dy[at + ${k}u];`),
      dweight ? each((k) => `dw${k} += d${k} * (x[at + ${k}u] - mu) * r;`) : "",
      dbias ? each((k) => `db${k} += d${k};`) : "",
    ],
    stores: [
      dweight ? each((k) => store("dweight", dweight, `out + ${k}u`, `dw${k}`), "\n  ") : "",
      dbias ? each((k) => store("dbias", dbias, `out + ${k}u`, `db${k}`), "\n  ") : "",
    ],
  });
}

/** y = layer_norm(x, [C], weight, bias, eps) over the last dimension of x. */
export function layerNorm(
  tape: Tape,
  x: Tensor,
  weight: Tensor,
  bias: Tensor,
  eps: number,
): Tensor {
  const cols = x.shape[x.shape.length - 1];
  for (const p of [weight, bias]) {
    if (p.shape.length !== 1 || p.shape[0] !== cols) {
      throw new ShapeError(`layerNorm: ${p} must have shape [${cols}] to normalise ${x}`);
    }
  }
  if ([x, weight, bias].some((t) => t.dtype !== "f32")) {
    throw new ShapeError(`layerNorm: ${x}, ${weight}, ${bias} must be f32`);
  }
  if (!(eps >= 0 && Number.isFinite(eps))) {
    throw new RangeError(`layerNorm: eps ${eps} must be finite and ≥ 0`);
  }
  const engine = tape.engine;
  const dims = rowDims(x.size / cols, cols);
  const y = tape.tensor(x.shape, `ln(${x.label})`);
  const mean = tape.tensor([dims.rows], `ln mean(${x.label})`);
  const rstd = tape.tensor([dims.rows], `ln rstd(${x.label})`);
  const forward = rowPass(
    engine,
    {
      name: "layernorm",
      label: "layernorm",
      dims,
      bindings: [
        ["x", "read", "array<V>"],
        ["weight", "read", "array<V>"],
        ["bias", "read", "array<V>"],
        ["y", "rw", "array<V>"],
        ["mean", "rw", "array<f32>"],
        ["rstd", "rw", "array<f32>"],
      ],
      resources: [x, weight, bias, y, mean, rstd],
    },
    FORWARD,
    eps,
  );
  tape.record({
    name: "layerNorm",
    inputs: [x, weight, bias],
    outputs: [y],
    forward: [forward],
    backward: (ctx) => {
      const dy = ctx.gradOutput(0);
      const [dx, dweight, dbias] = [0, 1, 2].map((i) => ctx.gradInput(i));
      const commands: Command[] = [];
      if (dx) {
        commands.push(rowPass(engine, {
          name: "layernorm_backward_x",
          label: "layernorm backward dx",
          dims,
          bindings: [
            ["x", "read", "array<V>"],
            ["weight", "read", "array<V>"],
            ["mean", "read", "array<f32>"],
            ["rstd", "read", "array<f32>"],
            ["dy", "read", "array<V>"],
            ["dx", "rw", "array<V>"],
          ],
          resources: [x, weight, mean, rstd, dy, dx.tensor],
        }, inputGradBody(dx.accumulate)));
      }
      if (dweight || dbias) {
        commands.push(...columnSums(tape, dims, { x, mean, rstd, dy }, { dweight, dbias }));
      }
      return commands;
    },
  });
  return y;
}

/**
 * dw = Σ_rows dy⊙x̂ and db = Σ_rows dy. One block of rows writes straight into the gradients;
 * more rows go through per-block partial sums and a second pass that adds them in block order.
 */
function columnSums(
  tape: Tape,
  dims: RowDims,
  saved: { x: Tensor; mean: Tensor; rstd: Tensor; dy: Tensor },
  targets: ColumnSums,
): Command[] {
  const engine = tape.engine;
  const blocks = Math.ceil(dims.rows / ROWS_PER_PARTIAL);
  const partialOf = (target: ColumnOutput | null, what: string): ColumnOutput | null =>
    target &&
    (blocks === 1
      ? target
      : { tensor: tape.tensor([blocks, dims.cols], `ln ${what} partials`), accumulate: false });
  const partials = {
    dweight: partialOf(targets.dweight, "dweight"),
    dbias: partialOf(targets.dbias, "dbias"),
  };
  const outputs = columnsWanted(partials);
  const { x, mean, rstd, dy } = saved;
  const commands: Command[] = [
    columnPartials(
      engine,
      {
        name: "layernorm_backward_columns",
        label: "layernorm backward dweight/dbias",
        dims,
        bindings: [
          ["x", "read", "array<V>"],
          ["mean", "read", "array<f32>"],
          ["rstd", "read", "array<f32>"],
          ["dy", "read", "array<V>"],
          ...outputs.map(([name]): Binding => [name, "rw", "array<V>"]),
        ],
        resources: [x, mean, rstd, dy, ...outputs.map(([, output]) => output.tensor)],
      },
      0,
      columnPartialsCode(partials),
    ),
  ];
  if (blocks === 1) return commands;
  const sums = (["dweight", "dbias"] as const).flatMap((name) => {
    const [partial, target] = [partials[name], targets[name]];
    return partial && target ? [{ name, partials: partial.tensor, target }] : [];
  });
  commands.push(columnTotals(
    engine,
    "layernorm_backward_column_totals",
    "layernorm backward column totals",
    dims,
    blocks,
    sums,
  ));
  return commands;
}
