// Embedding lookup: out[n] = table[ids[n]], and its backward, dtable[v] += Σ_{n: ids[n]=v} dout[n].
//
// The backward is a scatter-add without atomics (WGSL has no float atomics, and atomics would
// make the sum order, hence the bits, vary). Instead the host, which writes the ids every step,
// also writes their inverse index (as llm.c does): the distinct ids, and for each the positions
// holding it in ascending order (CSR offsets). One invocation per (distinct id, group of columns)
// then sums its positions in that fixed order and owns its output row alone.
//
// Tables over one storage binding (GPT-2's wte: 50257×768 f32 = 154 MB > 128 MiB) are given as
// a list of row blocks (see `splitRows`); each id is routed to the block holding its row.
import type { Binding } from "../engine/bindings.ts";
import type { Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { rowChunks } from "./chunks.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";

const WORKGROUP = 64;

/**
 * Ids the host rewrites every step: `count` ids below `limit` (the rows of the table they index),
 * with their inverse index. Created once; `set` refills the same GPU buffers, so commands built
 * over it replay with new ids.
 */
export class IndexInput {
  /** ids[n], u32 [count]. */
  readonly ids: Tensor;
  /** The number of distinct ids, u32 [1]. */
  readonly bucketCount: Tensor;
  /** The distinct ids in ascending order (the first `bucketCount` entries are used). */
  readonly bucketIds: Tensor;
  /** CSR offsets: the positions of bucketIds[k] are bucketPositions[starts[k] .. starts[k+1]). */
  readonly bucketStarts: Tensor;
  /** The positions 0..count−1 grouped by id, ascending within each id. */
  readonly bucketPositions: Tensor;
  #engine: Engine;

  constructor(
    engine: Engine,
    readonly count: number,
    readonly limit: number,
    readonly label = "ids",
  ) {
    for (const [name, value] of [["count", count], ["limit", limit]] as const) {
      if (!Number.isInteger(value) || value < 1) {
        throw new ShapeError(`IndexInput ${label}: ${name} ${value} must be a positive integer`);
      }
    }
    if (count * limit > Number.MAX_SAFE_INTEGER) {
      throw new ShapeError(`IndexInput ${label}: count·limit ${count}·${limit} is over 2^53`);
    }
    this.#engine = engine;
    const u32 = (shape: number[], what: string) =>
      engine.tensor(shape, { dtype: "u32", label: `${label} ${what}` });
    this.ids = engine.tensor([count], { dtype: "u32", label });
    this.bucketCount = u32([1], "bucket count");
    this.bucketIds = u32([count], "bucket ids");
    this.bucketStarts = u32([count + 1], "bucket starts");
    this.bucketPositions = u32([count], "bucket positions");
  }

  /** Writes `ids` (exactly `count` integers in [0, limit)) and their inverse index. */
  set(ids: ArrayLike<number>): void {
    const { count, limit } = this;
    if (ids.length !== count) {
      throw new ShapeError(`IndexInput ${this.label}: got ${ids.length} ids for ${count}`);
    }
    // Sorting keys id·count + position orders by id, then by position: exact in float64 for
    // any count·limit < 2^53.
    const keys = new Float64Array(count);
    for (let n = 0; n < count; n++) {
      const id = ids[n];
      if (!Number.isInteger(id) || id < 0 || id >= limit) {
        throw new RangeError(
          `IndexInput ${this.label}: id ${id} at position ${n} is outside 0..${limit - 1}`,
        );
      }
      keys[n] = id * count + n;
    }
    keys.sort();
    const bucketIds = new Uint32Array(count);
    const starts = new Uint32Array(count + 1);
    const positions = new Uint32Array(count);
    let buckets = 0;
    for (let k = 0; k < count; k++) {
      positions[k] = keys[k] % count;
      const id = (keys[k] - positions[k]) / count;
      if (buckets === 0 || bucketIds[buckets - 1] !== id) {
        bucketIds[buckets] = id;
        starts[buckets++] = k;
      }
    }
    starts.fill(count, buckets);
    const engine = this.#engine;
    engine.write(this.ids, ids);
    engine.write(this.bucketCount, [buckets]);
    engine.write(this.bucketIds, bucketIds);
    engine.write(this.bucketStarts, starts);
    engine.write(this.bucketPositions, positions);
  }

  /** GPU bytes held. */
  get byteLength(): number {
    return this.#tensors().reduce((sum, t) => sum + t.byteLength, 0);
  }

  dispose(): void {
    for (const t of this.#tensors()) t.dispose();
  }

  #tensors(): Tensor[] {
    return [this.ids, this.bucketCount, this.bucketIds, this.bucketStarts, this.bucketPositions];
  }
}

/**
 * Views of `table` [V, C] in row blocks of at most `maxBytes` (default: the adapter's largest
 * storage binding), starting at offsets the adapter can bind. A table that fits is returned whole.
 * When the table requires gradients, so do the blocks, and their gradients are views of the
 * table's (created here if missing), so the optimiser sees one gradient for the whole table.
 * For leaf tables (parameters): blocks of an op's output would be leaves cut off from that op.
 */
export function splitRows(engine: Engine, table: Tensor, maxBytes?: number): Tensor[] {
  const [rows, cols] = table.shape;
  if (table.shape.length !== 2) throw new ShapeError(`splitRows: ${table} must be [rows, cols]`);
  const limit = maxBytes ?? engine.limits.maxStorageBufferBindingSize;
  const chunks = rowChunks(engine, rows, cols, limit, `splitRows ${table}`);
  if (chunks.length === 1) return [table];
  const grad = table.requiresGrad
    ? table.grad ??= engine.tensor(table.shape, { label: `grad ${table.label}` })
    : undefined;
  return chunks.map(([start, end]) => {
    const shape = [end - start, cols];
    const label = `${table.label}[${start}:${start + shape[0]}]`;
    const block = engine.view(table, start * cols, shape, label);
    if (grad) {
      block.requiresGrad = true;
      block.grad = engine.view(grad, start * cols, shape, `grad ${label}`);
    }
    return block;
  });
}

/** A row block bound to a kernel: rows [start, start + rows of tensor) of the table. */
interface Block {
  tensor: Tensor;
  start: number;
}

/**
 * How a kernel walks a row of C floats: as `vecs` vectors of `type` (vec4 when C allows), `group`
 * consecutive vectors per invocation, so that the per-row loads of an id or of a bucket's
 * positions are shared by several columns (every load costs on lavapipe).
 */
interface RowLayout {
  type: string;
  vecs: number;
  group: number;
  /** Invocations per row: vecs / group. */
  groups: number;
}

function rowLayout(cols: number): RowLayout {
  const [type, vecs] = cols % 4 === 0 ? ["vec4f", cols / 4] : ["f32", cols];
  const group = [4, 2, 1].find((k) => vecs % k === 0)!;
  return { type, vecs, group, groups: vecs / group };
}

/** One line per vector of an invocation's group, `k` the vector's index in the group. */
function unrolled(layout: RowLayout, line: (k: number) => string, indent: string): string {
  return Array.from({ length: layout.group }, (_, k) => line(k)).join(`\n${indent}`);
}

/** Bindings named `${name}0`, `${name}1`, ... for the blocks. */
function blockBindings(
  blocks: Block[],
  name: string,
  kind: "read" | "rw",
  type: string,
): Binding[] {
  return blocks.map((_, b) => [`${name}${b}`, kind, `array<${type}>`]);
}

/** Runs `body(b)` for the block holding row `id`, with `row` set to the row inside the block. */
function route(blocks: Block[], body: (b: number) => string): string {
  return blocks.map(({ tensor, start }, b) =>
    `if (id >= ${start}u && id < ${start + tensor.shape[0]}u) {
    let row = id - ${start}u;
    ${body(b)}
  }`
  ).join(" else ");
}

/**
 * The start of a kernel with one invocation per (item, column group) of `count` items: `item`
 * names the item's index, `first` is the group's first vector.
 */
function groupedMain(layout: RowLayout, count: number, index: string, item: string): string {
  return `
const VECS = ${layout.vecs}u;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${count * layout.groups}u) { return; }
  let ${item} = i / ${layout.groups}u;
  let first = (i % ${layout.groups}u) * ${layout.group}u;`;
}

/** Gathers the rows of the ids held by `blocks`; ids in other blocks are left to other dispatches. */
function forwardWgsl(blocks: Block[], count: number, layout: RowLayout, index: string): string {
  return `${groupedMain(layout, count, index, "n")}
  let at = n * VECS + first;
  let id = ids[n];
  ${
    route(blocks, (b) =>
      `let src = row * VECS + first;
    ${unrolled(layout, (k) => `out[at + ${k}u] = table${b}[src + ${k}u];`, "    ")}`)
  }
}`;
}

/**
 * grad[id] += Σ dout[positions of id], for the distinct ids held by the gradient blocks.
 * Invocation (bucket, column group) sums its columns of one distinct id over the id's positions
 * in ascending order; consecutive invocations take consecutive column groups of the same id, so
 * SIMD lanes loop over the same positions. Each id's row has a single writer: no atomics.
 */
function backwardWgsl(grads: Block[], count: number, layout: RowLayout, index: string): string {
  const { type } = layout;
  const each = (line: (k: number) => string, indent = "  ") => unrolled(layout, line, indent);
  return `${groupedMain(layout, count, index, "bucket")}
  if (bucket >= bucket_count[0]) { return; }
  let id = bucket_ids[bucket];
  ${each((k) => `var sum${k} = ${type}(0.0);`)}
  for (var p = bucket_starts[bucket]; p < bucket_starts[bucket + 1u]; p++) {
    let src = bucket_positions[p] * VECS + first;
    ${each((k) => `sum${k} += dout[src + ${k}u];`, "    ")}
  }
  ${
    route(grads, (b) =>
      `let at = row * VECS + first;
    ${each((k) => `grad${b}[at + ${k}u] = grad${b}[at + ${k}u] + sum${k};`, "    ")}`)
  }
}`;
}

/** `blocks` in runs of at most `size`: one dispatch binds one run. */
function runs<T>(blocks: T[], size: number): T[][] {
  return Array.from(
    { length: Math.ceil(blocks.length / size) },
    (_, r) => blocks.slice(r * size, (r + 1) * size),
  );
}

/**
 * out[n] = table[ids[n]]: `table` is one [V, C] tensor or a list of row blocks [V_b, C] (in
 * row order, e.g. from `splitRows`). Gradients flow to the table (or to each block).
 */
export function embedding(tape: Tape, table: Tensor | readonly Tensor[], ids: IndexInput): Tensor {
  const tensors = Array.isArray(table) ? table : [table as Tensor];
  const cols = tensors[0]?.shape[1];
  const blocks: Block[] = [];
  let rows = 0;
  for (const tensor of tensors) {
    if (tensor.shape.length !== 2 || tensor.shape[1] !== cols || tensor.dtype !== "f32") {
      throw new ShapeError(
        `embedding: table blocks must all be f32 [rows, ${cols}]; got ${tensors.join(", ")}`,
      );
    }
    blocks.push({ tensor, start: rows });
    rows += tensor.shape[0];
  }
  if (blocks.length === 0) throw new ShapeError("embedding: no table given");
  if (ids.limit > rows) {
    throw new ShapeError(
      `embedding: ${ids.ids} may hold ids up to ${ids.limit - 1}, the table has ${rows} rows`,
    );
  }
  const engine = tape.engine;
  const count = ids.count;
  const out = tape.tensor([count, cols], `embedding(${tensors[0].label})`);
  const layout = rowLayout(cols);
  const grid = grid1d(count * layout.groups, WORKGROUP);
  // All blocks go in one dispatch when the adapter allows that many storage bindings.
  const maxBindings = engine.limits.maxStorageBuffersPerShaderStage;
  const forward = runs(blocks, maxBindings - 2).map((bound) => {
    const kernel = declareKernel(engine, "embedding", [
      ["ids", "read", "array<u32>"],
      ...blockBindings(bound, "table", "read", layout.type),
      ["out", "rw", `array<${layout.type}>`],
    ], forwardWgsl(bound, count, layout, grid.index));
    const tables = bound.map((b) => b.tensor);
    return engine.dispatch("embedding", kernel, [ids.ids, ...tables, out], grid.workgroups);
  });
  tape.record({
    name: "embedding",
    inputs: tensors,
    outputs: [out],
    forward,
    backward: (ctx) => {
      const dout = ctx.gradOutput(0);
      const targets = blocks.map((block, b) => ({ block, target: ctx.gradInput(b) }))
        .filter(({ target }) => target !== null);
      // The scatter adds into the rows of the ids present; overwriting must also zero the rows
      // of absent ids, so it starts from a cleared gradient.
      const clears = targets.filter(({ target }) => !target!.accumulate).map(({ target }) => ({
        kind: "clear" as const,
        label: `embedding backward: zero ${target!.tensor.label} (overwrite)`,
        tensor: target!.tensor,
      }));
      const scatters = runs(targets, maxBindings - 5).map((bound) => {
        const grads = bound.map(({ block, target }) => ({
          tensor: target!.tensor,
          start: block.start,
        }));
        const kernel = declareKernel(engine, "embedding_backward", [
          ["dout", "read", `array<${layout.type}>`],
          ["bucket_count", "read", "array<u32>"],
          ["bucket_ids", "read", "array<u32>"],
          ["bucket_starts", "read", "array<u32>"],
          ["bucket_positions", "read", "array<u32>"],
          ...blockBindings(grads, "grad", "rw", layout.type),
        ], backwardWgsl(grads, count, layout, grid.index));
        return engine.dispatch("embedding backward", kernel, [
          dout,
          ids.bucketCount,
          ids.bucketIds,
          ids.bucketStarts,
          ids.bucketPositions,
          ...grads.map((g) => g.tensor),
        ], grid.workgroups);
      });
      return [...clears, ...scatters];
    },
  });
  return out;
}
