// Special functions for the privacy accountant (fed/accountant.ts), in float64: log|Γ(x)| and
// log(erfc(x)) for arguments where the plain functions overflow or lose every digit (the
// accountant sums terms like C(α, i)·e^{i²/2σ²}·erfc(...) in log space, with i up to a thousand).
// JavaScript has neither; scipy's gammaln and log_ndtr, which dp-accounting calls, agree with
// these to about 1e-14 relative over the accountant's arguments (tests/fed/special_test.ts).

/** Stirling's series is used from here on (smaller arguments are shifted up to it). */
const STIRLING_FROM = 15;
/** B_2k / (2k(2k−1)) for k = 1..7: the coefficients of 1/x^(2k−1) in Stirling's series. */
const STIRLING = [1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156];
const HALF_LOG_2PI = 0.5 * Math.log(2 * Math.PI);

/**
 * log|Γ(x)| (scipy.special.gammaln): Stirling's series for x ≥ 15 (its first omitted term is
 * below 3617/122400/x^15 < 1e-19), the recurrence Γ(x) = Γ(x+1)/x below, and the reflection
 * Γ(x)Γ(1−x) = π/sin(πx) for x < 0.5. Poles (0, −1, −2, ...) give +∞.
 */
export function logGamma(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x < 0.5) {
    // sin(πx) from x's distance to the nearest integer, exact in float64, so that arguments
    // like −997.9 keep their digits (π·x itself would lose 13 bits).
    const s = Math.abs(Math.sin(Math.PI * (x - Math.round(x))));
    if (s === 0) return Infinity;
    return Math.log(Math.PI / s) - logGamma(1 - x);
  }
  let shift = 0;
  let y = x;
  while (y < STIRLING_FROM) {
    shift += Math.log(y);
    y += 1;
  }
  const inverse = 1 / y, inverse2 = inverse * inverse;
  let series = 0;
  for (let k = STIRLING.length - 1; k >= 0; k--) series = series * inverse2 + STIRLING[k];
  return (y - 0.5) * Math.log(y) - y + HALF_LOG_2PI + series * inverse - shift;
}

/** erf(x) by its Maclaurin series: every term's digits count for |x| ≤ 1 (terms ≤ e^{x²}·ε). */
function erfSeries(x: number): number {
  const x2 = x * x;
  let term = x, sum = x;
  for (let n = 1; n < 60; n++) {
    term *= -x2 / n;
    const next = sum + term / (2 * n + 1);
    if (next === sum) break;
    sum = next;
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

/**
 * log(e^{x²}·erfc(x)·√π) for x ≥ 1 by Laplace's continued fraction
 * erfc(x) = e^{−x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), evaluated by the modified
 * Lentz method until a factor changes nothing (a few dozen terms at x = 1, two at x = 30).
 */
function logScaledErfcFraction(x: number): number {
  const tiny = 1e-300;
  let f = x, c = x, d = 0;
  for (let n = 1; n < 5000; n++) {
    const a = n / 2;
    d = x + a * d;
    d = d === 0 ? tiny : 1 / d;
    c = x + a / c;
    if (c === 0) c = tiny;
    const factor = c * d;
    f *= factor;
    if (Math.abs(factor - 1) < 1e-16) break;
  }
  return -Math.log(f);
}

/** log(erfc(x)) for every real x: erfc(x) itself underflows beyond x ≈ 26.5. */
export function logErfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x < -1) return Math.log(2 - Math.exp(logErfc(-x)));
  if (x <= 1) return Math.log1p(-erfSeries(x));
  return -x * x - 0.5 * Math.log(Math.PI) + logScaledErfcFraction(x);
}
