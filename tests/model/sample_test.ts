// sampleToken: greedy is argmax with the lowest index on ties, top-k restricts the support (ties
// at the k-th value resolved by index), temperature behaves at its limits, a seed fixes the
// draws, and the draws follow the float64 softmax of the kept logits.
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { Mulberry32 } from "../../model/rng.ts";
import { sampleToken } from "../../model/sample.ts";

const never = {
  next(): number {
    throw new Error("greedy decoding must not draw random numbers");
  },
};

/** How often each id comes out of `draws` samples. */
function histogram(
  logits: number[],
  options: { temperature: number; topK: number },
  draws: number,
  seed = 1,
): number[] {
  const rng = new Mulberry32(seed);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < draws; i++) counts[sampleToken(logits, options, rng)]++;
  return counts;
}

function softmax(logits: number[], temperature: number): number[] {
  const max = Math.max(...logits);
  const e = logits.map((x) => Math.exp((x - max) / temperature));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / total);
}

Deno.test("temperature 0 is argmax, lowest index on ties, without drawing", () => {
  assertEquals(sampleToken([0.1, 2, -1, 1.9], { temperature: 0, topK: 40 }, never), 1);
  assertEquals(sampleToken([3, 1, 3, 3], { temperature: 0, topK: 0 }, never), 0);
  assertEquals(sampleToken([-5, 7, 7], { temperature: 0, topK: 1 }, never), 1);
  assertEquals(
    sampleToken(new Float32Array([-Infinity, -2, -1]), { temperature: 0, topK: 0 }, never),
    2,
  );
});

Deno.test("top-k keeps only the k largest logits; ties at the k-th value go to lower indices", () => {
  const logits = [0.5, 3, -1, 2, 2.5, 0, 1];
  const counts = histogram(logits, { temperature: 1, topK: 3 }, 5000);
  assertEquals(counts.map((c) => c > 0), [false, true, false, true, true, false, false]);
  // Ids 1..3 tie at the top; k = 2 keeps ids 1 and 2 whatever the draws.
  const tied = histogram([0, 5, 5, 5, -1], { temperature: 1, topK: 2 }, 2000);
  assertEquals(tied.map((c) => c > 0), [false, true, true, false, false]);
  // Equal logits within the kept set are equally likely: 2000 fair coin flips stay within 5σ
  // (σ = √(2000/4) ≈ 22) of 1000.
  assert(Math.abs(tied[1] - 1000) < 5 * 22, `tied counts ${tied}`);
  // topK = 1 is greedy, and k ≥ the vocabulary keeps everything.
  assertEquals(histogram(logits, { temperature: 5, topK: 1 }, 200).indexOf(200), 1);
  assert(histogram(logits, { temperature: 1, topK: 99 }, 5000).every((c) => c > 0));
});

Deno.test("temperature limits: tiny T samples the argmax, huge T samples uniformly", () => {
  const logits = [1, 4, 3.999, -2, 0];
  assertEquals(histogram(logits, { temperature: 1e-6, topK: 0 }, 1000)[1], 1000);
  // At T = 1e9 every weight is exp(−6e−9) ≈ 1: each of the 5 ids has p ≈ 0.2. 20000 draws give
  // σ = √(20000·0.2·0.8) ≈ 57 per count; 5σ is far outside chance.
  const uniform = histogram(logits, { temperature: 1e9, topK: 0 }, 20000);
  for (const c of uniform) assert(Math.abs(c - 4000) < 5 * 57, `counts ${uniform}`);
});

Deno.test("the same seed gives the same draws; another seed gives other draws", () => {
  const logits = Array.from({ length: 50 }, (_, i) => Math.sin(i));
  const run = (seed: number) => {
    const rng = new Mulberry32(seed);
    return Array.from({ length: 100 }, () => sampleToken(logits, { temperature: 1, topK: 0 }, rng));
  };
  assertEquals(run(42), run(42));
  assert(run(42).join() !== run(43).join(), "seeds 42 and 43 drew the same 100 tokens");
});

Deno.test("draws follow the softmax of the kept logits (within 5σ per id)", () => {
  const logits = [2, 1, 0.5, 0, -1, -3, 1.5, 0.25];
  const temperature = 0.7;
  const draws = 200_000;
  // k = 0 keeps all; k = 3 keeps ids 0, 6, 1 and renormalises over them.
  for (const topK of [0, 3]) {
    const kept = logits.map((x, id) => topK === 0 || [0, 6, 1].includes(id) ? x : -Infinity);
    const p = softmax(kept, temperature);
    const counts = histogram(logits, { temperature, topK }, draws, 7);
    // Each count is Binomial(draws, p): 5 standard deviations fail by chance ~1e-6 per id,
    // while a wrong temperature or an off-by-one in the CDF moves some id by far more (e.g.
    // ±0.01·N = 2000 against σ ≤ 224).
    counts.forEach((count, id) => {
      const sigma = Math.sqrt(draws * p[id] * (1 - p[id]));
      assert(
        Math.abs(count - draws * p[id]) <= 5 * sigma,
        `k=${topK}, id ${id}: ${count} draws, expected ${(draws * p[id]).toFixed(0)} ± ` +
          sigma.toFixed(0),
      );
    });
  }
});

Deno.test("sampleToken rejects what it cannot sample from", () => {
  const rng = new Mulberry32(0);
  assertThrows(() => sampleToken([], { temperature: 1, topK: 0 }, rng), RangeError, "no logits");
  assertThrows(
    () => sampleToken([1], { temperature: -1, topK: 0 }, rng),
    RangeError,
    "temperature",
  );
  assertThrows(() => sampleToken([1], { temperature: 1, topK: 1.5 }, rng), RangeError, "topK");
  assertThrows(() => sampleToken([1, NaN], { temperature: 1, topK: 0 }, rng), RangeError, "NaN");
});
