// The privacy accountant of differentially private federated rounds: Rényi DP of the Poisson-
// sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the
// Sampled Gaussian Mechanism", arXiv 1908.10530), composed over rounds by adding RDP, converted to
// (ε, δ). The computation follows Google's dp-accounting 0.6.0 (rdp_privacy_accountant.py, the
// successor of TF Privacy's rdp_accountant) step for step, at the same orders, so its numbers are
// the reference (tests/fed/accountant_test.ts); everything is float64 and deterministic.
//
// Conversion to (ε, δ): the improved bound of Balle et al. 2020 ("Hypothesis testing
// interpretations and Rényi DP", Prop. 12; also Canonne, Kamath, Steinke 2020, eq. 20), as
// dp-accounting and Opacus use: ε = min over α of RDP(α) + log(1 − 1/α) − log(δ·α)/(α − 1). It is
// never worse than the classic ε = RDP(α) − log δ/(α − 1) (Mironov 2017, Prop. 3) and about 0.3
// smaller at the usual δ = 1e-5.
//
// The RDP of one round depends only on the sampling rate and the noise multiplier, so ε after r
// rounds is a function of r alone: a resumed run needs no accountant state.
import { logErfc, logGamma } from "./special.ts";

/** dp-accounting's DEFAULT_RDP_ORDERS: 1.1, 1.2, ..., 10.9, 11, ..., 63, 128, 256, 512, 1024. */
export const DEFAULT_RDP_ORDERS: readonly number[] = [
  ...Array.from({ length: 99 }, (_, x) => 1 + (x + 1) / 10),
  ...Array.from({ length: 53 }, (_, x) => 11 + x),
  128,
  256,
  512,
  1024,
];

/** Fractional orders give up (and count as +∞, i.e. are left out) after this many terms. */
const MAX_FRACTIONAL_TERMS = 1000;

/** log(e^a + e^b) without overflow. */
function logAdd(a: number, b: number): number {
  const lo = Math.min(a, b), hi = Math.max(a, b);
  if (lo === -Infinity) return hi;
  return Math.log1p(Math.exp(lo - hi)) + hi;
}

/** log|C(n, k)| for real n, k (negative binomials of fractional orders included). */
function logBinomial(n: number, k: number): number {
  return logGamma(n + 1) - logGamma(k + 1) - logGamma(n - k + 1);
}

/** log A_α for an integer order α ≥ 2: the binomial expansion (MTZ19 §3.3, eq. for integer α). */
function logAInteger(q: number, sigma: number, alpha: number): number {
  let logA = -Infinity;
  const log1mq = Math.log1p(-q);
  for (let i = 0; i <= alpha; i++) {
    const term = logBinomial(alpha, i) + i * Math.log(q) + (alpha - i) * log1mq;
    logA = logAdd(logA, term + (i * i - i) / (2 * sigma * sigma));
  }
  return logA;
}

/**
 * log A_α for a fractional order: the two series split at z0 (MTZ19 §3.3), with |C(α, i)| (as
 * dp-accounting 0.6.0: an upper bound, so the RDP stays valid). +∞ when the series has not
 * settled after MAX_FRACTIONAL_TERMS terms (the order is then useless, not wrong).
 */
function logAFractional(q: number, sigma: number, alpha: number): number {
  let logA0 = -Infinity, logA1 = -Infinity;
  const z0 = sigma * sigma * Math.log(1 / q - 1) + 0.5;
  const log1mq = Math.log1p(-q);
  const logQ = Math.log(q);
  let lastS0 = -Infinity, lastS1 = -Infinity;
  for (let i = 0; i < MAX_FRACTIONAL_TERMS; i++) {
    const logCoef = logBinomial(alpha, i);
    const j = alpha - i;
    const logT0 = logCoef + i * logQ + j * log1mq;
    const logT1 = logCoef + j * logQ + i * log1mq;
    const logE0 = Math.log(0.5) + logErfc((i - z0) / (Math.SQRT2 * sigma));
    const logE1 = Math.log(0.5) + logErfc((z0 - j) / (Math.SQRT2 * sigma));
    const logS0 = logT0 + (i * i - i) / (2 * sigma * sigma) + logE0;
    const logS1 = logT1 + (j * j - j) / (2 * sigma * sigma) + logE1;
    logA0 = logAdd(logA0, logS0);
    logA1 = logAdd(logA1, logS1);
    const total = logAdd(logA0, logA1);
    // Both series decreasing and their terms negligible (e^-30) against the total.
    if (logS0 < lastS0 && logS1 < lastS1 && Math.max(logS0, logS1) < total - 30) return total;
    lastS0 = logS0;
    lastS1 = logS1;
  }
  return Infinity;
}

/**
 * RDP at each order of one application of the Poisson-sampled Gaussian mechanism: each
 * participant joins with probability `q`, its contribution has L2 sensitivity 1, and the noise
 * has standard deviation `noiseMultiplier`. q = 1 is the plain Gaussian mechanism (α/2σ²).
 */
export function rdpSampledGaussian(
  q: number,
  noiseMultiplier: number,
  orders: readonly number[] = DEFAULT_RDP_ORDERS,
): Float64Array {
  if (!(q >= 0 && q <= 1)) throw new RangeError(`sampling rate ${q} is not in [0, 1]`);
  if (!(noiseMultiplier >= 0) || !Number.isFinite(noiseMultiplier)) {
    throw new RangeError(`noise multiplier ${noiseMultiplier} must be finite and ≥ 0`);
  }
  return Float64Array.from(orders, (alpha) => {
    if (!(alpha > 1)) throw new RangeError(`RDP order ${alpha} must be > 1`);
    if (q === 0) return 0;
    if (alpha === Infinity || noiseMultiplier === 0) return Infinity;
    if (q === 1) return alpha / (2 * noiseMultiplier * noiseMultiplier);
    const logA = Number.isInteger(alpha)
      ? logAInteger(q, noiseMultiplier, alpha)
      : logAFractional(q, noiseMultiplier, alpha);
    return logA / (alpha - 1);
  });
}

export interface EpsilonAtOrder {
  epsilon: number;
  /** The order that gave the smallest ε. */
  order: number;
}

/** The smallest ε over the orders for `delta` (the conversion stated at the top of this file). */
export function epsilonFromRdp(
  orders: readonly number[],
  rdp: ArrayLike<number>,
  delta: number,
): EpsilonAtOrder {
  if (!(delta > 0 && delta < 1)) throw new RangeError(`δ = ${delta} is not in (0, 1)`);
  if (orders.length !== rdp.length || orders.length === 0) {
    throw new RangeError(`${orders.length} orders for ${rdp.length} RDP values`);
  }
  let best: EpsilonAtOrder = { epsilon: Infinity, order: orders[0] };
  orders.forEach((alpha, k) => {
    const r = rdp[k];
    let epsilon: number;
    if (r < 0) epsilon = 0; // dp-accounting: only numerical noise of extreme events gets here
    else if (delta * delta + Math.expm1(-r) > 0) epsilon = 0; // δ ≥ √(1 − e^{−KL}) already
    else if (alpha > 1.01) {
      epsilon = r + Math.log1p(-1 / alpha) - Math.log(delta * alpha) / (alpha - 1);
    } else epsilon = Infinity; // the bound is numerically unstable as α → 1
    if (epsilon < best.epsilon) best = { epsilon, order: alpha };
  });
  return { epsilon: Math.max(0, best.epsilon), order: best.order };
}

/**
 * ε after any number of rounds of one sampled Gaussian mechanism. The per-round RDP is computed
 * once; `epsilon(rounds)` composes it (RDP adds up over rounds) and converts.
 */
export class RdpAccountant {
  readonly perRound: Float64Array;

  constructor(
    readonly samplingRate: number,
    readonly noiseMultiplier: number,
    readonly delta: number,
    readonly orders: readonly number[] = DEFAULT_RDP_ORDERS,
  ) {
    this.perRound = rdpSampledGaussian(samplingRate, noiseMultiplier, orders);
    epsilonFromRdp(orders, this.perRound, delta); // refuses a bad δ at construction
  }

  /** (ε, the best order) after `rounds` rounds (0 rounds: ε = 0). */
  epsilon(rounds: number): EpsilonAtOrder {
    if (!Number.isInteger(rounds) || rounds < 0) {
      throw new RangeError(`rounds = ${rounds} is not a count`);
    }
    // 0 · ∞ (an order whose series did not settle) would be NaN: no round spends nothing.
    const composed = this.perRound.map((r) => rounds === 0 ? 0 : r * rounds);
    return epsilonFromRdp(this.orders, composed, this.delta);
  }
}
