// Cutting tensors into bindable chunks: the chunks cover the range in order, each fits, each
// starts where a view may start; the whole range stays one chunk when it fits.
import assert from "node:assert/strict";
import { LimitError } from "../../engine/errors.ts";
import {
  alignedChunks,
  bindingChunks,
  gcd,
  lcm,
  type Range,
  rowChunks,
  rowElements,
  rowGranule,
  vec4Granule,
} from "../../kernels/chunks.ts";
import { gpuTest } from "../util.ts";

/** The properties every split must have. */
function assertSplit(chunks: Range[], total: number, max: number, granule: number): void {
  assert.equal(chunks[0][0], 0, "starts at 0");
  assert.equal(chunks[chunks.length - 1][1], total, "ends at the total");
  for (let i = 0; i < chunks.length; i++) {
    const [start, end] = chunks[i];
    if (i > 0) assert.equal(start, chunks[i - 1][1], `chunk ${i} follows chunk ${i - 1}`);
    assert.ok(end > start, `chunk ${i} is not empty`);
    assert.ok(end - start <= max || chunks.length === 1, `chunk ${i} fits`);
    assert.equal(start % granule, 0, `chunk ${i} starts at a multiple of ${granule}`);
  }
}

Deno.test("gcd and lcm", () => {
  assert.deepEqual([gcd(12, 18), gcd(7, 5), gcd(32, 3072), gcd(5, 0)], [6, 1, 32, 5]);
  assert.deepEqual([lcm(4, 6), lcm(4, 8), lcm(1, 7)], [12, 8, 7]);
});

Deno.test("row granules: the fewest rows spanning a multiple of the alignment", () => {
  // 256-byte alignment: rows of 768 f32 (3072 bytes) are aligned each; rows of 17 f32 (68
  // bytes) need 64 rows (4352 bytes); single f32s need 64.
  assert.deepEqual([rowGranule(256, 768), rowGranule(256, 17), rowGranule(256, 1)], [1, 64, 64]);
  assert.deepEqual([rowGranule(32, 3), rowGranule(32, 2), rowGranule(32, 8)], [8, 4, 1]);
  // Flat chunks also keep whole vec4s: never fewer than 4 elements.
  assert.deepEqual([vec4Granule(256), vec4Granule(32), vec4Granule(16), vec4Granule(4)], [
    64,
    8,
    4,
    4,
  ]);
});

Deno.test("aligned chunks: whole when it fits, else full chunks and a shorter last one", () => {
  assert.deepEqual(alignedChunks(100, 100, 8, "t"), [[0, 100]]);
  assert.deepEqual(alignedChunks(100, 30, 8, "t"), [[0, 24], [24, 48], [48, 72], [72, 96], [
    96,
    100,
  ]]);
  for (const [total, max, granule] of [[1000, 77, 8], [65536, 4096, 64], [5, 1, 1], [9, 8, 4]]) {
    const chunks = alignedChunks(total, max, granule, "t");
    assertSplit(chunks, total, max, granule);
    // Greedy: every chunk but the last holds the most granules that fit.
    for (const [start, end] of chunks.slice(0, -1)) {
      assert.equal(end - start, Math.floor(max / granule) * granule);
    }
  }
});

Deno.test("balanced chunks: the same count of chunks, of nearly equal size", () => {
  // 300 in chunks of ≤ 256: greedy 256 + 44; balanced 2 chunks of 150, rounded up to the granule.
  assert.deepEqual(alignedChunks(300, 256, 4, "t"), [[0, 256], [256, 300]]);
  assert.deepEqual(alignedChunks(300, 256, 4, "t", true), [[0, 152], [152, 300]]);
  for (const [total, max, granule] of [[20000, 16384, 64], [70000, 65536, 4], [7, 1, 1]]) {
    const chunks = alignedChunks(total, max, granule, "t", true);
    assertSplit(chunks, total, max, granule);
    assert.equal(chunks.length, Math.ceil(total / (Math.floor(max / granule) * granule)));
  }
});

Deno.test("a split with no aligned chunk is one clear error", () => {
  assert.throws(
    () => alignedChunks(100, 7, 8, "weights"),
    (e: Error) =>
      e instanceof LimitError && /^weights: cannot split 100 into chunks/.test(e.message),
  );
});

gpuTest("row chunks and binding chunks follow the adapter's alignment", (engine) => {
  const align = engine.limits.minStorageBufferOffsetAlignment;
  // GPT-2's wte (50257 rows of 768) under the real limit: whole rows, aligned starts.
  const maxBytes = engine.limits.maxStorageBufferBindingSize;
  const rows = rowChunks(engine, 50257, 768, maxBytes, "wte");
  assertSplit(rows, 50257, Math.floor(maxBytes / (4 * 768)), rowGranule(align, 768));
  assert.ok(rows.length > 1);
  // Rows of 17 under a 4 KiB limit: starts at multiples of the row granule.
  assertSplit(rowChunks(engine, 300, 17, 4096, "t"), 300, 60, rowGranule(align, 17));
  // Binding chunks of a flat tensor: every chunk but the last a whole number of vec4s.
  const chunks = bindingChunks(engine, 1003, 256);
  assertSplit(
    chunks.map(({ start, count }) => [start, start + count]),
    1003,
    64,
    vec4Granule(align),
  );
  assert.deepEqual(bindingChunks(engine, 1003), [{ start: 0, count: 1003 }]);
  return Promise.resolve();
});

gpuTest("row chunks with a quantum start at multiples of it and of the granule", (engine) => {
  const align = engine.limits.minStorageBufferOffsetAlignment;
  // Rows of 768 are aligned each (granule 1): the quantum alone sets the starts.
  const blocks = rowChunks(engine, 1000, 768, 4 * 768 * 200, "t", 64);
  assertSplit(blocks, 1000, 200, 64);
  assert.deepEqual(blocks.map(([start]) => start), [0, 192, 384, 576, 768, 960]);
  // Rows of 17 and a quantum of 6: starts at multiples of lcm(granule, 6).
  const granule = lcm(rowGranule(align, 17), 6);
  assertSplit(rowChunks(engine, 5000, 17, 4 * 17 * 1000, "t", 6), 5000, 1000, granule);
  // A quantum of 1 leaves the split as it was; a tensor that fits stays whole.
  assert.deepEqual(
    rowChunks(engine, 300, 17, 4096, "t", 1),
    rowChunks(engine, 300, 17, 4096, "t"),
  );
  assert.deepEqual(rowChunks(engine, 100, 768, 4 * 768 * 100, "t", 64), [[0, 100]]);
  assert.throws(
    () => rowChunks(engine, 100, 768, 4 * 768 * 50, "blocks", 64),
    (e: Error) => e instanceof LimitError && /^blocks: cannot split 100/.test(e.message),
  );
  return Promise.resolve();
});

Deno.test("rowElements: the element range of a row range", () => {
  assert.deepEqual(rowElements([3, 7], 5), { start: 15, count: 20 });
  assert.deepEqual(rowElements([0, 1], 768), { start: 0, count: 768 });
});
