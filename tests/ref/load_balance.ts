// Float64 reference for the load-balancing loss of one MoE layer (method.md §1) and its
// vector-Jacobian product with respect to the router logits.
import { topkIndices } from "./topk_gate.ts";

/** F_e = E·f_e: 1/ρ for the generalist (expert 0), (E−1)/(1−ρ) for each specialist. */
export function expertFactorsRef(experts: number, rho: number): Float64Array {
  return Float64Array.from(
    { length: experts },
    (_, e) => e === 0 ? 1 / rho : (experts - 1) / (1 - rho),
  );
}

function softmax(row: number[]): number[] {
  const max = Math.max(...row);
  const e = row.map((v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

function rowOf(logits: ArrayLike<number>, experts: number, n: number): number[] {
  return Array.from({ length: experts }, (_, j) => logits[n * experts + j]);
}

/** density_e: the fraction of (token, slot) pairs routed to e, k clipped to E (no gradient). */
export function densityRef(logits: ArrayLike<number>, experts: number, k: number): Float64Array {
  const rows = logits.length / experts;
  const kept = Math.min(k, experts);
  const density = new Float64Array(experts);
  for (let n = 0; n < rows; n++) {
    for (const e of topkIndices(rowOf(logits, experts, n), kept)) density[e] += 1 / (rows * kept);
  }
  return density;
}

/** prob_e: the mean over tokens of softmax(all E logits)_e. */
export function meanProbRef(logits: ArrayLike<number>, experts: number): Float64Array {
  const rows = logits.length / experts;
  const prob = new Float64Array(experts);
  for (let n = 0; n < rows; n++) {
    softmax(rowOf(logits, experts, n)).forEach((p, e) => prob[e] += p / rows);
  }
  return prob;
}

/** LB = E² · mean_e(prob_e · density_e · f_e) with f_e = F_e / E. */
export function loadBalanceRef(
  logits: ArrayLike<number>,
  experts: number,
  k: number,
  rho: number,
): number {
  const prob = meanProbRef(logits, experts);
  const density = densityRef(logits, experts, k);
  const factors = expertFactorsRef(experts, rho);
  let mean = 0;
  for (let e = 0; e < experts; e++) mean += prob[e] * density[e] * (factors[e] / experts) / experts;
  return experts * experts * mean;
}

/**
 * dLB/dlogits times the upstream gradient `dlb`, with the selection (density) held fixed:
 * with c_e = density_e·f_e and p the row's softmax, dl[n, j] = (E/N)·p_j·(c_j − Σ_e c_e·p_e).
 */
export function loadBalanceBackwardRef(
  logits: ArrayLike<number>,
  experts: number,
  k: number,
  rho: number,
  dlb: number,
): Float64Array {
  const rows = logits.length / experts;
  const density = densityRef(logits, experts, k);
  const factors = expertFactorsRef(experts, rho);
  const c = Array.from({ length: experts }, (_, e) => density[e] * factors[e] / experts);
  const dlogits = new Float64Array(logits.length);
  for (let n = 0; n < rows; n++) {
    const p = softmax(rowOf(logits, experts, n));
    const mean = p.reduce((s, pe, e) => s + pe * c[e], 0);
    for (let j = 0; j < experts; j++) {
      dlogits[n * experts + j] = dlb * (experts / rows) * p[j] * (c[j] - mean);
    }
  }
  return dlogits;
}
