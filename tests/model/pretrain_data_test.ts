// Pretraining data: token streams with document boundaries, reproducible random batches whose
// PRNG state can be saved and continued, and held-out windows that cover every target once.
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { BatchSampler, evalBatches, evalWindows, tokenStream } from "../../model/pretrain_data.ts";
import type { Tokenizer } from "../../model/tokenizer.ts";

/** One token per character code below 99; id 99 is the end of text. */
const charTokenizer = {
  vocabSize: 100,
  eotId: 99,
  encode: (text: string) => Array.from(text, (c) => c.charCodeAt(0) % 99),
} as unknown as Tokenizer;

const ramp = (n: number) => Uint32Array.from({ length: n }, (_, i) => i);

Deno.test("tokenStream concatenates documents, each followed by the end-of-text id", () => {
  const stream = tokenStream(charTokenizer, ["ab", "", "c"]);
  assertEquals([...stream], [97 % 99, 98 % 99, 99, 99, 0, 99]);
});

Deno.test("batches are B windows of T+1 consecutive stream ids, in range", () => {
  const stream = ramp(50);
  const sampler = new BatchSampler(stream, 4, 7, 123);
  for (let step = 0; step < 100; step++) {
    const batch = sampler.next();
    assertEquals(batch.length, 4);
    for (const seq of batch) {
      assertEquals(seq.length, 8);
      assert(seq[0] >= 0 && seq[7] <= 49, `window ${seq} leaves the stream`);
      seq.forEach((id, t) => assertEquals(id, seq[0] + t));
    }
  }
  // Every start offset 0..42 is reachable, the last one included.
  const starts = new Set<number>();
  const wide = new BatchSampler(stream, 1, 7, 5);
  for (let i = 0; i < 2000; i++) starts.add(wide.next()[0][0]);
  assertEquals(starts.size, 43);
  assertThrows(() => new BatchSampler(ramp(5), 1, 5, 0), RangeError);
});

Deno.test("batches are reproducible from the seed and continue from a saved PRNG state", () => {
  const stream = ramp(1000);
  const a = new BatchSampler(stream, 3, 16, 42);
  const b = new BatchSampler(stream, 3, 16, 42);
  const first = [a.next(), a.next()];
  assertEquals([b.next(), b.next()], first);
  const resumed = new BatchSampler(stream, 3, 16, a.rng.state);
  assertEquals(resumed.next(), a.next());
  const other = new BatchSampler(stream, 3, 16, 43);
  assert(JSON.stringify(other.next()) !== JSON.stringify(first[0]), "seed has no effect");
});

Deno.test("held-out windows count every target once, the partial last window included", () => {
  for (const [n, T] of [[17, 4], [16, 5], [2, 8], [9, 8]]) {
    const stream = ramp(n);
    const windows = evalWindows(stream, T, 0);
    const targets: number[] = [];
    for (const w of windows) {
      assertEquals(w.ids.length, T + 1);
      for (let t = 0; t < w.targets; t++) targets.push(w.ids[t + 1]);
    }
    assertEquals(targets, [...stream.subarray(1)], `n=${n} T=${T}`);
    const batches = evalBatches(windows, 3, T);
    assert(batches.every((b) => b.length === 3));
    assertEquals(batches.flat().reduce((s, w) => s + w.targets, 0), n - 1);
  }
});
