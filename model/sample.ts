// Picking the next token from one row of logits: temperature scaling, top-k filtering, then a
// draw from the softmax, all in float64 on the CPU (one row of ≤ 50257 values per token). The
// randomness comes from a seeded PRNG, so the same seed always gives the same tokens.

export interface SampleOptions {
  /** Divides the logits before the softmax; 0 means greedy (argmax, lowest index on ties). */
  temperature: number;
  /** Keep only the k largest logits; 0 (or k ≥ vocabulary) keeps all. */
  topK: number;
}

/** The id of the next token. `rng.next()` (uniform in [0, 1)) is called once per non-greedy draw. */
export function sampleToken(
  logits: ArrayLike<number>,
  { temperature, topK }: SampleOptions,
  rng: { next(): number },
): number {
  if (logits.length === 0) throw new RangeError("sampleToken: no logits");
  if (!(temperature >= 0) || !Number.isFinite(temperature)) {
    throw new RangeError(
      `sampleToken: temperature must be a finite number ≥ 0, got ${temperature}`,
    );
  }
  if (!Number.isInteger(topK) || topK < 0) {
    throw new RangeError(`sampleToken: topK must be an integer ≥ 0, got ${topK}`);
  }
  for (let i = 0; i < logits.length; i++) {
    if (Number.isNaN(logits[i])) throw new RangeError(`sampleToken: logit ${i} is NaN`);
  }
  if (temperature === 0) return argmax(logits);
  const candidates = topK === 0 || topK >= logits.length
    ? Array.from({ length: logits.length }, (_, i) => i)
    : topKIndices(logits, topK);
  // Softmax of (logit − max) / T: the max maps to exp(0) = 1, so nothing overflows, and a tiny
  // T sends every smaller logit to exp(−∞) = 0 (the greedy limit) instead of NaN.
  let max = -Infinity;
  for (const i of candidates) max = Math.max(max, logits[i]);
  const weights = new Float64Array(candidates.length);
  let total = 0;
  candidates.forEach((id, j) => {
    weights[j] = logits[id] === max ? 1 : Math.exp((logits[id] - max) / temperature);
    total += weights[j];
  });
  // Inverse CDF: the first candidate whose cumulative weight exceeds u·total. The last
  // candidate with nonzero weight catches rounding at the top end.
  const target = rng.next() * total;
  let cumulative = 0, last = candidates[0];
  for (let j = 0; j < candidates.length; j++) {
    if (weights[j] === 0) continue;
    cumulative += weights[j];
    last = candidates[j];
    if (target < cumulative) return last;
  }
  return last;
}

/** The index of the largest value; the lowest such index on ties. */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * The indices of the k largest values, ordered by value (descending) then index (ascending):
 * ties at the k-th value keep the lowest indices. A sorted list of the best k so far; most
 * values fail the comparison with its last entry, so this is ~one pass for k ≪ n.
 */
function topKIndices(values: ArrayLike<number>, k: number): number[] {
  const best: number[] = [];
  // Scanning in index order, a later index never displaces an equal earlier one (strict >).
  for (let i = 0; i < values.length; i++) {
    if (best.length === k && !(values[i] > values[best[k - 1]])) continue;
    let at = best.length;
    while (at > 0 && values[i] > values[best[at - 1]]) at--;
    best.splice(at, 0, i);
    if (best.length > k) best.pop();
  }
  return best;
}
