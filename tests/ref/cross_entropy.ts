// Float64 reference for the mean cross-entropy over rows and its gradient.

export interface CrossEntropyRef {
  loss: number;
  rowLosses: Float64Array;
}

/** loss_r = logsumexp(logits_r) − logits_r[target_r]; loss = mean_r loss_r. */
export function crossEntropyRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  vocab: number,
): CrossEntropyRef {
  const rows = targets.length;
  const rowLosses = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    rowLosses[r] = logSumExp(logits, r * vocab, vocab) - logits[r * vocab + targets[r]];
  }
  return { loss: rowLosses.reduce((a, b) => a + b, 0) / rows, rowLosses };
}

/**
 * dlogits = upstream · (softmax(logits_r) − onehot(target_r)) / N, for the rows given; N is
 * `meanOver` when these rows are a slice of a larger batch.
 */
export function crossEntropyBackwardRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  vocab: number,
  upstream = 1,
  meanOver = targets.length,
): Float64Array {
  const rows = targets.length;
  const dlogits = new Float64Array(rows * vocab);
  for (let r = 0; r < rows; r++) {
    const base = r * vocab;
    const lse = logSumExp(logits, base, vocab);
    for (let j = 0; j < vocab; j++) {
      const p = Math.exp(logits[base + j] - lse);
      dlogits[base + j] = upstream * (p - (j === targets[r] ? 1 : 0)) / meanOver;
    }
  }
  return dlogits;
}

function logSumExp(x: ArrayLike<number>, start: number, count: number): number {
  let max = -Infinity;
  for (let j = 0; j < count; j++) max = Math.max(max, x[start + j]);
  let sum = 0;
  for (let j = 0; j < count; j++) sum += Math.exp(x[start + j] - max);
  return max + Math.log(sum);
}
