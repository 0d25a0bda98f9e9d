// Rotary position embeddings as Hugging Face applies them to Llama and Qwen2 queries and keys
// (apply_rotary_pos_emb with rotate_half: non-interleaved halves). For each head's row x of D
// elements at position t, with halves x₁ = x[0, D/2), x₂ = x[D/2, D) and frequencies f_i
// (rope_frequencies.ts), c_i = cos(t·f_i), s_i = sin(t·f_i):
//   y = x·cos + rotate_half(x)·sin:   y₁ = x₁·c − x₂·s,   y₂ = x₂·c + x₁·s.
// A rotation of each pair (x₁_i, x₂_i); backward is its transpose:
//   dx₁ = dy₁·c + dy₂·s,   dx₂ = dy₂·c − dy₁·s.
//
// Layout: x is [B, T, H·D], a projection's output as it comes (head h in columns h·D ..
// (h+1)·D, as HF's view(B, T, H, D)); position t is x's second index. The cos|sin table
// [P ≥ T, D] holds row t = [c_0 .. c_{D/2−1} | s_0 .. s_{D/2−1}], computed on the host in
// float64 and rounded once to f32, built once per model and shared by every layer's q and k.
// One invocation rotates 4 pairs (vec4 loads when D/2 is a multiple of 4) or one.
import type { Command, Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { chunkView, type Range, rowChunks, rowElements } from "./chunks.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";

const WORKGROUP = 64;

/** cos|sin rows for positions 0 .. positions − 1 (see the header), as float64. */
export function ropeCosSin(frequencies: ArrayLike<number>, positions: number): Float64Array {
  const half = frequencies.length;
  const table = new Float64Array(positions * 2 * half);
  for (let t = 0; t < positions; t++) {
    for (let i = 0; i < half; i++) {
      const angle = t * frequencies[i];
      table[t * 2 * half + i] = Math.cos(angle);
      table[t * 2 * half + half + i] = Math.sin(angle);
    }
  }
  return table;
}

/** The cos|sin table [positions, D] as a tensor the caller owns (and disposes). */
export function ropeTable(
  engine: Engine,
  frequencies: ArrayLike<number>,
  positions: number,
  label = "rope cos|sin",
): Tensor {
  const shape = [positions, 2 * frequencies.length];
  return engine.tensor(shape, { data: ropeCosSin(frequencies, positions), label });
}

/** What a rope kernel is specialised for: one chunk of rows of x. */
interface Dims {
  /** Rows (b, t) in the chunk, and the row the chunk starts at. */
  rows: number;
  first: number;
  T: number;
  heads: number;
  /** Head size D. */
  D: number;
}

/** Elements per load: 4 when a half of the head is a whole number of vec4s. */
const width = (D: number) => (D / 2) % 4 === 0 ? 4 : 1;

/**
 * A kernel writing, for every pair, y₁ = `firstHalf` and y₂ = `secondHalf`: expressions of the
 * pair's halves x1, x2 (of x forward, of dy backward) and its c, s. Adds to y when `accumulate`.
 */
function rotateWgsl(
  dims: Dims,
  index: string,
  firstHalf: string,
  secondHalf: string,
  accumulate: boolean,
): string {
  const half = dims.D / 2 / width(dims.D);
  const units = dims.rows * dims.heads * half;
  const add = (at: string) => accumulate ? `y[${at}] + ` : "";
  return `
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${units}u) { return; }
  let row = i / ${dims.heads * half}u;
  let head = i % ${dims.heads * half}u / ${half}u;
  let pair = i % ${half}u;
  let a = (row * ${dims.heads}u + head) * ${2 * half}u + pair;
  let b = a + ${half}u;
  let at = (${dims.first}u + row) % ${dims.T}u * ${2 * half}u + pair;
  let c = cos_sin[at];
  let s = cos_sin[at + ${half}u];
  let x1 = x[a];
  let x2 = x[b];
  y[a] = ${add("a")}${firstHalf};
  y[b] = ${add("b")}${secondHalf};
}`;
}

export interface RopeOptions {
  /** Split as if a binding could hold at most this many bytes (tests of the chunked path). */
  maxBindingBytes?: number;
}

/**
 * y = rope(x): x [B, T, H·D] (H heads of size D side by side), rotated by the cos|sin `table`
 * [P ≥ T, D] of ropeTable. Saves nothing (backward needs only the table).
 */
export function rope(tape: Tape, x: Tensor, table: Tensor, opts: RopeOptions = {}): Tensor {
  if (x.dtype !== "f32" || table.dtype !== "f32" || x.shape.length !== 3) {
    throw new ShapeError(`rope: x must be f32 [B, T, heads·D], got ${x}`);
  }
  const [B, T, W] = x.shape;
  if (table.shape.length !== 2 || table.shape[1] % 2 !== 0 || W % table.shape[1] !== 0) {
    throw new ShapeError(
      `rope: the cos|sin table ${table} must be [positions, D] with an even D dividing ${W}, ` +
        `the width of ${x}`,
    );
  }
  if (table.shape[0] < T) {
    throw new ShapeError(
      `rope: the table ${table} covers ${table.shape[0]} positions, ${x} has ${T}`,
    );
  }
  const engine = tape.engine;
  const D = table.shape[1];
  const heads = W / D;
  const maxBytes = opts.maxBindingBytes ?? engine.limits.maxStorageBufferBindingSize;
  const chunks = rowChunks(engine, B * T, W, maxBytes, `rope ${x}`);
  const y = tape.tensor(x.shape, `rope(${x.label})`);
  const rows = (t: Tensor, chunk: Range) => chunkView(engine, t, rowElements(chunk, W));
  const pass = (
    name: string,
    source: Tensor,
    target: Tensor,
    formulas: [string, string],
    accumulate: boolean,
  ): Command[] =>
    chunks.map((chunk) => {
      const [first, end] = chunk;
      const dims = { rows: end - first, first, T, heads, D };
      const grid = grid1d(dims.rows * heads * D / 2 / width(D), WORKGROUP);
      const array = `array<${width(D) === 4 ? "vec4f" : "f32"}>`;
      const kernel = declareKernel(engine, name, [
        ["x", "read", array],
        ["cos_sin", "read", array],
        ["y", "rw", array],
      ], rotateWgsl(dims, grid.index, ...formulas, accumulate));
      const resources = [rows(source, chunk), table, rows(target, chunk)];
      return engine.dispatch(name.replace("_", " "), kernel, resources, grid.workgroups);
    });
  tape.record({
    name: "rope",
    inputs: [x],
    outputs: [y],
    forward: pass("rope", x, y, ["x1 * c - x2 * s", "x2 * c + x1 * s"], false),
    backward: (ctx) => {
      const dx = ctx.gradInput(0);
      if (!dx) return [];
      const transposed: [string, string] = ["x1 * c + x2 * s", "x2 * c - x1 * s"];
      return pass("rope_backward", ctx.gradOutput(0), dx.tensor, transposed, dx.accumulate);
    },
  });
  return y;
}
