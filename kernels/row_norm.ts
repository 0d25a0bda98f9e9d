// What the row normalisations (layernorm.ts, rmsnorm.ts) share. One invocation normalises one
// row: on lavapipe every storage load is a loop over the SIMD lanes, so the cost is the number
// of load instructions, and a row per invocation needs no workgroup barriers (coroutine switches
// there). Rows are read as vec4 when C allows. Their parameter gradients are column sums over
// the rows, in two phases (fixed order, no atomics): per-block partial sums of ROWS_PER_PARTIAL
// rows, written by each op's own kernel, then `columnTotals` adding them in block order.
import type { Binding } from "../engine/bindings.ts";
import type { Command, Engine } from "../engine/device.ts";
import type { Tensor } from "../engine/tensor.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";
import { floatLiteral } from "./literals.ts";

const WORKGROUP = 64;
/** Rows summed by one invocation in the first phase of the column sums. */
export const ROWS_PER_PARTIAL = 64;

/** The shapes a row kernel is specialised for. */
export interface RowDims {
  rows: number;
  /** Normalised length C. */
  cols: number;
  /** Vectors per row: C/4 when rows are read as vec4, else C. */
  vecs: number;
}

/** The dims of `rows` rows of length `cols`. */
export function rowDims(rows: number, cols: number): RowDims {
  return { rows, cols, vecs: cols % 4 === 0 ? cols / 4 : cols };
}

/** WGSL shared by all row kernels: the row element type V, its horizontal sum and the dims. */
export function rowPrelude({ rows, cols, vecs }: RowDims): string {
  const vec4 = vecs !== cols;
  return `
alias V = ${vec4 ? "vec4f" : "f32"};
fn total(v: V) -> f32 { return ${vec4 ? "(v.x + v.y) + (v.z + v.w)" : "v"}; }
const ROWS = ${rows}u;
const C: f32 = ${floatLiteral(cols)};
const VECS = ${vecs}u;
`;
}

/** Where one column sum goes: a partial-sum buffer or the gradient itself. */
export interface ColumnOutput {
  tensor: Tensor;
  accumulate: boolean;
}

/** The WGSL statement writing `value` to `name`[`at`], or adding it when `out` accumulates. */
export function store(
  name: string,
  out: { accumulate: boolean },
  at: string,
  value: string,
): string {
  return `${name}[${at}] = ${out.accumulate ? `${name}[${at}] + ` : ""}${value};`;
}

/** One column sum of phase 2: its name, its per-block partial sums, where its total goes. */
export interface ColumnTotal {
  name: string;
  partials: Tensor;
  target: ColumnOutput;
}

function columnTotalsWgsl(
  dims: RowDims,
  blocks: number,
  sums: readonly ColumnTotal[],
  index: string,
): string {
  const lines = (line: (sum: ColumnTotal) => string, indent = "\n  ") =>
    sums.map(line).join(indent);
  return `${rowPrelude(dims)}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let j = ${index};
  if (j >= VECS) { return; }
  ${lines(({ name }) => `var ${name}_sum = V(0.0);`)}
  for (var block = 0u; block < ${blocks}u; block++) {
    ${lines(({ name }) => `${name}_sum += ${name}_partials[block * VECS + j];`, "\n    ")}
  }
  ${lines(({ name, target }) => store(name, target, "j", `${name}_sum`))}
}`;
}

/**
 * Phase 2 of the column sums: one dispatch in which each vector column adds up the partials of
 * each of `sums` over `blocks` row blocks, in block order, into its target.
 */
export function columnTotals(
  engine: Engine,
  name: string,
  label: string,
  dims: RowDims,
  blocks: number,
  sums: readonly ColumnTotal[],
): Command {
  const grid = grid1d(dims.vecs, WORKGROUP);
  const kernel = declareKernel(
    engine,
    name,
    sums.flatMap(({ name }): Binding[] => [
      [`${name}_partials`, "read", "array<V>"],
      [name, "rw", "array<V>"],
    ]),
    columnTotalsWgsl(dims, blocks, sums, grid.index),
  );
  const resources = sums.flatMap(({ partials, target }) => [partials, target.tensor]);
  return engine.dispatch(label, kernel, resources, grid.workgroups);
}
