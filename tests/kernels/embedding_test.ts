import { add } from "../../kernels/add.ts";
import { embedding, IndexInput, splitRows } from "../../kernels/embedding.ts";
import type { Engine } from "../../engine/device.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import { embeddingBackwardRef, embeddingRef } from "../ref/embedding.ts";
import { addRef } from "../ref/add.ts";
import { assertEquals, assertThrows } from "../assert.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, Rng } from "../util.ts";

// The forward is a copy: exact.
const EXACT = { atol: 0, rtol: 0 };
/** dtable rows are f32 sums of `repeats` upstream values of order 1 (plus the value they add
 * onto), in a fixed order: rounding error ~ ulp(partial sums)·√repeats, which 1e-7 per term
 * bounds with room to spare for the ≤ 1024 terms used here. */
function sumTol(repeats: number) {
  return { atol: 1e-7 * (repeats + 1), rtol: 1e-6 };
}

Deno.test("embedding reference gradient matches finite differences", () => {
  const rng = new Rng(1);
  const cols = 3, vocab = 5;
  const ids = [1, 4, 1, 0, 1];
  const table = rng.uniform(vocab * cols);
  const dout = rng.uniform(ids.length * cols);
  assertGradMatchesFD(
    (t) => dot(embeddingRef(t, ids, cols), dout),
    table,
    embeddingBackwardRef(dout, ids, vocab, cols),
    "embedding dtable",
  );
});

/** The most times any one id occurs. */
function maxRepeats(ids: ArrayLike<number>): number {
  const counts = new Map<number, number>();
  for (const id of Array.from(ids)) counts.set(id, (counts.get(id) ?? 0) + 1);
  return Math.max(...counts.values());
}

/**
 * The table rows a test writes and reads back: every row of a small table; of a large one (GPT-2's
 * 50257 rows), the ids present and their neighbours, where an off-by-one would land.
 */
function watchedRows(vocab: number, ids: ArrayLike<number>): number[] {
  if (vocab <= 8192) return Array.from({ length: vocab }, (_, row) => row);
  const rows = new Set<number>();
  for (const id of Array.from(ids)) {
    for (const row of [id - 1, id, id + 1]) if (row >= 0 && row < vocab) rows.add(row);
  }
  return [...rows].sort((a, b) => a - b);
}

/** Distinct f32 values for each (row, column), cheap enough for millions of elements. */
function rowValues(rows: readonly number[], cols: number, salt: number): Float32Array {
  const values = new Float32Array(rows.length * cols);
  rows.forEach((row, k) => {
    for (let c = 0; c < cols; c++) {
      values[k * cols + c] = ((row * 131 + c * 7 + salt) % 1009) / 504.5 - 1;
    }
  });
  return values;
}

/** Writes `values` into `rows` of a [V, C] tensor (whole, or one row view at a time). */
function writeRows(engine: Engine, tensor: Tensor, rows: readonly number[], values: Float32Array) {
  const cols = tensor.shape[1];
  if (rows.length === tensor.shape[0]) return engine.write(tensor, values);
  rows.forEach((row, k) => {
    const view = engine.view(tensor, row * cols, [cols]);
    engine.write(view, values.subarray(k * cols, (k + 1) * cols));
  });
}

/** Reads `rows` of a [V, C] tensor: whole, or gathered by row copies (no 154 MB read-back). */
async function readRows(
  engine: Engine,
  tensor: Tensor,
  rows: readonly number[],
): Promise<Float32Array> {
  const cols = tensor.shape[1];
  if (rows.length === tensor.shape[0]) return await engine.readF32(tensor);
  const gathered = engine.tensor([rows.length, cols], { label: "gathered rows" });
  await engine.run(rows.map((row, k) => ({
    kind: "copy" as const,
    label: "gather row",
    src: engine.view(tensor, row * cols, [cols]),
    dst: engine.view(gathered, k * cols, [cols]),
  })));
  const values = await engine.readF32(gathered);
  gathered.dispose();
  return values;
}

interface Case {
  vocab: number;
  cols: number;
  ids: ArrayLike<number>;
  /** Split the table into row blocks of at most this many bytes (the adapter's limit if 0). */
  splitBytes?: number;
  /** How many forward+backward steps to run with the same ids (set once). */
  steps?: number;
}

/**
 * Forward and accumulated backward (leaf table whose gradient starts non-zero) against float64,
 * on the watched rows: rows of ids present must hold before + Σ dout, the others stay unchanged.
 * The references run on the watched rows only (ids renumbered), so no dense 50257-row copy.
 */
async function checkEmbedding(engine: Engine, c: Case, seed: number): Promise<number> {
  const { vocab, cols, ids, steps = 1 } = c;
  const count = ids.length;
  const rows = watchedRows(vocab, ids);
  const slot = new Map(rows.map((row, k) => [row, k]));
  const slotIds = Array.from(ids, (id) => slot.get(id)!);
  const tableRows = rowValues(rows, cols, seed);
  const before = rowValues(rows, cols, seed + 1);
  const doutData = f32(new Rng(seed).uniform(count * cols));
  const table = engine.tensor([vocab, cols], { label: "table" });
  writeRows(engine, table, rows, tableRows);
  table.requiresGrad = true;
  table.grad = engine.tensor([vocab, cols], { label: "grad table" });
  writeRows(engine, table.grad, rows, before);
  const blocks = c.splitBytes === undefined
    ? [table]
    : splitRows(engine, table, c.splitBytes || undefined);
  const input = new IndexInput(engine, count, vocab);
  input.set(ids);
  const dout = engine.tensor([count, cols], { data: doutData, label: "dout" });
  const tape = new Tape(engine);
  const out = embedding(tape, c.splitBytes === undefined ? table : blocks, input);
  const backward = tape.backward(out, dout);
  for (let step = 0; step < steps; step++) await engine.run([...tape.forward(), ...backward]);
  assertClose(await engine.readF32(out), embeddingRef(tableRows, slotIds, cols), EXACT, "out");
  const summed = embeddingBackwardRef(doutData, slotIds, rows.length, cols);
  assertClose(
    await readRows(engine, table.grad, rows),
    Float64Array.from(summed, (v, i) => before[i] + steps * v),
    sumTol(steps * maxRepeats(ids)),
    "dtable (accumulated)",
  );
  tape.dispose();
  input.dispose();
  for (const t of [table, dout, ...blocks]) t.dispose();
  return blocks.length;
}

const awkward: [number, number, number][] = [[1, 1, 1], [5, 3, 17], [37, 17, 65], [37, 65, 127], [
  100,
  8,
  300,
]];
for (const [vocab, cols, count] of awkward) {
  gpuTest(
    `embedding matches float64 with repeated ids (V=${vocab} C=${cols} N=${count})`,
    async (engine) => {
      // Ids from a quarter of the vocabulary: most occur several times.
      const ids = new Rng(count).int(count, Math.max(1, vocab >> 2));
      await checkEmbedding(engine, { vocab, cols, ids }, count);
    },
  );
}

gpuTest("embedding routes ids to row blocks of a split table", async (engine) => {
  // 256-byte blocks of C=8 rows hold 8 rows each: 37 rows make 5 blocks. C=3 rows are 12 bytes,
  // so blocks start every 8 rows (96 bytes, a multiple of the 32-byte offset alignment). One-row
  // blocks (37 of them) exceed the storage bindings of one dispatch: several dispatches.
  const ids = [0, 7, 8, 15, 16, 36, 35, 8, 8, 0, 23, 24, 31, 32];
  for (const [cols, splitBytes, expected] of [[8, 256, 5], [3, 256, 3], [8, 32, 37]]) {
    const blocks = await checkEmbedding(engine, { vocab: 37, cols, ids, splitBytes }, cols);
    assertEquals(blocks, expected, `blocks for C=${cols} in ${splitBytes} bytes`);
  }
});

gpuTest("embedding at the reference config (V=8192, C=256, 8×128 tokens)", async (engine) => {
  const ids = new Rng(3).int(1024, 8192);
  await checkEmbedding(engine, { vocab: 8192, cols: 256, ids }, 3);
});

gpuTest("embedding serves position embeddings: ids set once, reused every step", async (engine) => {
  const positions = Array.from({ length: 8 * 128 }, (_, n) => n % 128);
  await checkEmbedding(engine, { vocab: 1024, cols: 256, ids: positions, steps: 2 }, 4);
});

gpuTest("embedding at GPT-2 size: wte 50257×768 split over bindings, N=1024", async (engine) => {
  const rng = new Rng(5);
  const ids = Array.from(rng.int(1024, 50257));
  // Many positions share a few ids, and ids sit on both sides of the block boundary.
  const boundary = Math.floor(engine.limits.maxStorageBufferBindingSize / (768 * 4));
  for (let n = 0; n < 200; n++) ids[n * 5] = [0, 50256, boundary - 1, boundary][n % 4];
  const blocks = await checkEmbedding(engine, { vocab: 50257, cols: 768, ids, splitBytes: 0 }, 5);
  assertEquals(blocks, 2, "wte blocks");
});

gpuTest("embedding backward is deterministic with hundreds of repeats per id", async (engine) => {
  const count = 1024, cols = 256, vocab = 8192;
  const ids = new Rng(6).int(count, 3).map((k) => [3, 7, vocab - 1][k]);
  const table = engine.tensor([vocab, cols], { label: "table" });
  table.requiresGrad = true;
  const input = new IndexInput(engine, count, vocab);
  input.set(ids);
  const doutData = f32(new Rng(7).uniform(count * cols));
  const dout = engine.tensor([count, cols], { data: doutData, label: "dout" });
  const tape = new Tape(engine);
  const out = embedding(tape, table, input);
  await engine.run(tape.forward());
  const backward = tape.backward(out, dout);
  const bits: Uint32Array[] = [];
  for (let run = 0; run < 2; run++) {
    await engine.run([{ kind: "clear", label: "zero dtable", tensor: table.grad! }, ...backward]);
    const got = await engine.readF32(table.grad!);
    assertClose(got, embeddingBackwardRef(doutData, ids, vocab, cols), sumTol(count), "dtable");
    bits.push(new Uint32Array(got.buffer));
  }
  assertEquals(bits[1], bits[0], "dtable bits of two runs");
  tape.dispose();
  input.dispose();
  for (const t of [table, dout]) t.dispose();
});

gpuTest(
  "embedding overwrites an intermediate table's gradient and accumulates the second use",
  async (engine) => {
    // table = t0 + zeros feeds two lookups: the tape asks the later one (first in backward) to
    // overwrite table's gradient and the other to accumulate. Two backward runs must leave
    // t0.grad at exactly twice one run's gradient.
    const vocab = 37, cols = 12, count = 65;
    const tableData = rowValues(Array.from({ length: vocab }, (_, row) => row), cols, 1);
    const t0 = engine.tensor([vocab, cols], { data: tableData, label: "t0" });
    t0.requiresGrad = true;
    const zeros = engine.tensor([vocab, cols], { label: "zeros" });
    const idsA = new Rng(8).int(count, 10), idsB = new Rng(9).int(count, vocab);
    const inputA = new IndexInput(engine, count, vocab),
      inputB = new IndexInput(engine, count, vocab);
    inputA.set(idsA);
    inputB.set(idsB);
    const doutData = f32(new Rng(10).uniform(count * cols));
    const dout = engine.tensor([count, cols], { data: doutData, label: "dout" });
    const tape = new Tape(engine);
    const table = add(tape, t0, zeros);
    const out = add(tape, embedding(tape, table, inputA), embedding(tape, table, inputB));
    await engine.run(tape.forward());
    assertClose(
      await engine.readF32(out),
      f32(addRef(embeddingRef(tableData, idsA, cols), embeddingRef(tableData, idsB, cols))),
      EXACT,
      "sum of two lookups",
    );
    const backward = tape.backward(out, dout);
    await engine.run(backward);
    await engine.run(backward);
    const twice = Float64Array.from(doutData, (v) => 2 * v);
    assertClose(
      await engine.readF32(t0.grad!),
      embeddingBackwardRef([...twice, ...twice], [...idsA, ...idsB], vocab, cols),
      sumTol(4 * count),
      "t0.grad after two backward runs",
    );
    tape.dispose();
    for (const t of [t0, zeros, dout, inputA, inputB]) t.dispose();
  },
);

gpuTest("IndexInput rejects bad ids, naming the id and its position", (engine) => {
  const input = new IndexInput(engine, 4, 10, "tokens");
  assertThrows(() => input.set([1, 2, 10, 3]), RangeError, "id 10 at position 2 is outside 0..9");
  assertThrows(() => input.set([-1, 2, 3, 4]), RangeError, "id -1 at position 0");
  assertThrows(() => input.set([1, 2.5, 3, 4]), RangeError, "id 2.5 at position 1");
  assertThrows(() => input.set([1, 2, 3, NaN]), RangeError, "id NaN at position 3");
  assertThrows(() => input.set([1, 2, 3]), ShapeError, "got 3 ids for 4");
  const tape = new Tape(engine);
  const small = engine.tensor([9, 4]);
  assertThrows(() => embedding(tape, small, input), ShapeError, "the table has 9 rows");
  const other = engine.tensor([4, 3]);
  assertThrows(
    () => embedding(tape, [small, other], input),
    ShapeError,
    "must all be f32 [rows, 4]",
  );
  tape.dispose();
  input.dispose();
  small.dispose();
  other.dispose();
  return Promise.resolve();
});
