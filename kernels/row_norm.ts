// The kernel skeletons of the row normalisations (layernorm.ts, rmsnorm.ts); each op writes the
// WGSL of its own math into them. `rowPass`: one invocation normalises one row: on lavapipe every
// storage load is a loop over the SIMD lanes, so the cost is the number of load instructions,
// and a row per invocation needs no workgroup barriers (coroutine switches there). Rows are read
// as vec4 when C allows. Parameter gradients are column sums of per-row terms, in two phases
// (fixed order, no atomics): `columnPartials` sums each block of ROWS_PER_PARTIAL rows, the terms
// written by the op, then `columnTotals` adds the blocks' sums in block order.
import type { Binding } from "../engine/bindings.ts";
import type { Command, Engine, Resource } from "../engine/device.ts";
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
function rowPrelude({ rows, cols, vecs }: RowDims): string {
  const vec4 = vecs !== cols;
  return `
alias V = ${vec4 ? "vec4f" : "f32"};
fn total(v: V) -> f32 { return ${vec4 ? "(v.x + v.y) + (v.z + v.w)" : "v"}; }
const ROWS = ${rows}u;
const C: f32 = ${floatLiteral(cols)};
const VECS = ${vecs}u;
`;
}

/** A dispatch of a row kernel: its kernel's name, its label, dims, bindings and resources. */
export interface RowDispatch {
  name: string;
  label: string;
  dims: RowDims;
  bindings: readonly Binding[];
  resources: readonly Resource[];
}

function dispatchRows(
  engine: Engine,
  d: RowDispatch,
  wgsl: string,
  workgroups: readonly [number, number],
): Command {
  const kernel = declareKernel(engine, d.name, d.bindings, wgsl);
  return engine.dispatch(d.label, kernel, d.resources, workgroups);
}

/**
 * One invocation per row of `d.dims`: the prelude, the constant EPS when `eps` is given, then
 * `body` (WGSL statements) with `row` and `base` (the index of its first vector) in scope.
 */
export function rowPass(engine: Engine, d: RowDispatch, body: string, eps?: number): Command {
  const grid = grid1d(d.dims.rows, WORKGROUP);
  const constants = eps === undefined ? "" : `\nconst EPS: f32 = ${floatLiteral(eps)};`;
  return dispatchRows(
    engine,
    d,
    `${rowPrelude(d.dims)}${constants}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let row = ${grid.index};
  if (row >= ROWS) { return; }
  let base = row * VECS;
${body}
}`,
    grid.workgroups,
  );
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

/** `line` for each column k of an invocation's group of vector columns, joined by `indent`. */
export type EachColumn = (line: (k: number) => string, indent?: string) => string;

/** An op's part of a phase-1 kernel: WGSL written with `each` over the invocation's columns. */
export interface PartialSumsCode {
  /** Declarations of the accumulators, before the row loop. */
  declare: string;
  /** Statements for each row, with `row` and `at` (the row's first element of the group). */
  perRow: readonly string[];
  /** Statements after the loop, with `out` (the block's first element of the group). */
  stores: readonly string[];
}

/**
 * Phase 1 of the column sums: a dispatch in which invocation (row block, column group) runs over
 * its block of ROWS_PER_PARTIAL of the `d.dims.rows` rows, in row order, for a group of up to four
 * consecutive vector columns, so that per-row loads (mean, rstd) serve several columns.
 * Consecutive invocations take consecutive column groups of one block, so the SIMD lanes run
 * loops of equal length. The blocks' partial rows are numbered from `firstBlock` in the output.
 */
export function columnPartials(
  engine: Engine,
  d: RowDispatch,
  firstBlock: number,
  code: (each: EachColumn) => PartialSumsCode,
): Command {
  const dims = d.dims;
  const blocks = Math.ceil(dims.rows / ROWS_PER_PARTIAL);
  const group = [4, 2, 1].find((k) => dims.vecs % k === 0)!;
  const groups = dims.vecs / group;
  const grid = grid1d(blocks * groups, WORKGROUP);
  const columns = Array.from({ length: group }, (_, k) => k);
  const each: EachColumn = (line, indent = "\n    ") => columns.map(line).join(indent);
  const { declare, perRow, stores } = code(each);
  const out = firstBlock === 0 ? "block" : `(${firstBlock}u + block)`;
  return dispatchRows(
    engine,
    d,
    `${rowPrelude(dims)}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${grid.index};
  if (i >= ${blocks * groups}u) { return; }
  let block = i / ${groups}u;
  let first = (i % ${groups}u) * ${group}u;
  ${declare}
  let last = min((block + 1u) * ${ROWS_PER_PARTIAL}u, ROWS);
  for (var row = block * ${ROWS_PER_PARTIAL}u; row < last; row++) {
    let at = row * VECS + first;
    ${perRow.join("\n    ")}
  }
  let out = ${out} * VECS + first;
  ${stores.join("\n  ")}
}`,
    grid.workgroups,
  );
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
