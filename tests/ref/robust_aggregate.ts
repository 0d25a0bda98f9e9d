// Float64 references for the server's aggregators, written from their textbook definitions:
// numpy's median, scipy.stats.trim_mean, and a weighted mean whose token claims are clamped to the
// smallest claim that at least a strict majority of clients do not exceed.

/** numpy.median of one coordinate's values. */
export function medianRef(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 === 1 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/** scipy.stats.trim_mean(values, F): lowercut = int(F·n), the mean of s[lowercut : n−lowercut]. */
export function trimmedMeanRef(values: readonly number[], trim: number): number {
  const s = [...values].sort((a, b) => a - b);
  const lowercut = Math.trunc(trim * s.length);
  const kept = s.slice(lowercut, s.length - lowercut);
  return kept.reduce((a, b) => a + b, 0) / kept.length;
}

/** The smallest claim c that more than half of the claims do not exceed. */
function majorityCap(claims: readonly number[]): number {
  const n = claims.length;
  return Math.min(...claims.filter((c) => claims.filter((d) => d <= c).length > n / 2));
}

/** Σ_c w_c·x_c with w ∝ min(claim, cap) (the cap: majorityCap), over one coordinate. */
export function cappedTokenMeanRef(values: readonly number[], claims: readonly number[]): number {
  const cap = majorityCap(claims);
  const weights = claims.map((c) => Math.min(c, cap));
  const total = weights.reduce((a, b) => a + b, 0);
  return values.reduce((sum, x, c) => sum + (weights[c] / total) * x, 0);
}
