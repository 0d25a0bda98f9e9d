// The server's aggregation of the shared tensors (method.md §2): a uniform mean over clients (the
// authors' default), one weighted by claimed training tokens, or a robust coordinate-wise median
// or trimmed mean (Yin, Chen, Ramchandran, Bartlett 2018), each of which a minority of arbitrary
// updates cannot drag arbitrarily far. Everything runs in float64 in the clients' order (order
// statistics: in sorted order) and is rounded to float32 once, so the result is deterministic;
// every client must send the same names and shapes (methods share only what all clients hold:
// attention LoRA and the generalist; fed/validate_update.ts refuses the others beforehand).
import type { NamedTensor } from "../model/safetensors.ts";
import type { Message } from "./message.ts";

export type Weighting = "uniform" | "tokens";
export const WEIGHTINGS: readonly Weighting[] = ["uniform", "tokens"];

export type Aggregation = Weighting | "median" | "trimmed-mean";
export const AGGREGATIONS: readonly Aggregation[] = ["uniform", "tokens", "median", "trimmed-mean"];

export interface AggregationOptions {
  /** trimmed-mean: the fraction F in [0, 0.5) cut from each side (see trimCount). */
  trim?: number;
}

/**
 * A suggested --trim: with 4 to 7 clients it drops the lowest and the highest value of every
 * coordinate (a smaller F would drop nothing from 4 clients, since ⌊F·4⌋ = 0 for F < 0.25).
 */
export const DEFAULT_TRIM = 0.25;

/**
 * Values cut from each side of every coordinate by the trimmed mean of n: k = ⌊F·n⌋ with F·n in
 * float64 (as scipy.stats.trim_mean and Flower's FedTrimmedAvg), so F = 0.25 cuts 1 of 4..7 and
 * 2 of 8..11, and k = 0 (a plain mean) when F·n < 1. F must be in [0, 0.5): then F·n < n/2 in
 * float64 too (its largest F, 0.5 − 2⁻⁵⁴, times n rounds below n/2), so at least one value is
 * left; F ≥ 0.5 would cut everything and is refused.
 */
export function trimCount(clients: number, trim: number): number {
  if (!(trim >= 0 && trim < 0.5)) {
    throw new RangeError(`--trim ${trim}: the fraction cut from each side must be in [0, 0.5)`);
  }
  return Math.floor(trim * clients);
}

/**
 * The token claims that weigh a `tokens` mean, each clamped to the upper median claim (the
 * ⌊n/2⌋-th smallest, 0-based) of the round. The server cannot verify a claim, but as long as
 * fewer than half the clients inflate theirs, the upper median is at most the largest honest
 * claim: an inflated claim (10¹⁵ tokens) then weighs no more than the largest honest client, and
 * no client can become the global model. Honest claims at or below the upper median are kept
 * exactly; for two clients nothing is clamped (neither is a majority).
 */
export function cappedClaims(claims: readonly number[]): number[] {
  const sorted = [...claims].sort((a, b) => a - b);
  const cap = sorted[Math.floor(sorted.length / 2)];
  return claims.map((claim) => Math.min(claim, cap));
}

/**
 * Why a round keeps the previous global, or null when it aggregates: fewer accepted updates than
 * `minClients` (--min-clients). Under central DP the noised aggregate is released every round
 * instead (fed/privacy.ts): skipping would reveal how many updates arrived.
 */
export function quorumShortfall(
  round: number,
  accepted: number,
  minClients: number,
): string | null {
  if (accepted >= minClients) return null;
  return `round ${round}: ${accepted} accepted update${accepted === 1 ? "" : "s"}, fewer than ` +
    `the ${minClients} required (min clients); the previous global is kept`;
}

export function aggregate(
  messages: readonly Message[],
  aggregation: Aggregation,
  options: AggregationOptions = {},
): Map<string, NamedTensor> {
  if (messages.length === 0) throw new Error("aggregate: no client messages");
  const names = [...messages[0].tensors.keys()].sort();
  for (const m of messages) {
    const theirs = [...m.tensors.keys()].sort();
    if (theirs.join() !== names.join()) {
      throw new Error(
        `aggregate: client ${m.sender} sent [${theirs.join(", ")}], client ` +
          `${messages[0].sender} sent [${names.join(", ")}]; clients must share the same tensors`,
      );
    }
  }
  const combine = combiner(messages, aggregation, options);
  const out = new Map<string, NamedTensor>();
  for (const name of names) {
    const { shape } = messages[0].tensors.get(name)!;
    const columns = messages.map((m) => {
      const t = m.tensors.get(name)!;
      if (t.shape.join() !== shape.join()) {
        throw new Error(
          `aggregate: ${name} is [${t.shape}] from client ${m.sender}, [${shape}] before`,
        );
      }
      return t.data;
    });
    out.set(name, { shape: [...shape], data: combine(columns) });
  }
  return out;
}

/** How one tensor's values from every client (in client order) become the aggregate. */
function combiner(
  messages: readonly Message[],
  aggregation: Aggregation,
  options: AggregationOptions,
): (columns: Float32Array[]) => Float32Array {
  const n = messages.length;
  if (aggregation === "uniform" || aggregation === "tokens") {
    let weights = messages.map(() => 1 / n);
    if (aggregation === "tokens") {
      const claims = cappedClaims(messages.map((m) => m.trainTokens));
      const totalTokens = claims.reduce((sum, c) => sum + c, 0);
      if (!(totalTokens > 0)) {
        throw new Error("aggregate: token weighting needs clients with training tokens");
      }
      weights = claims.map((c) => c / totalTokens);
    }
    return (columns) => {
      const sum = new Float64Array(columns[0].length);
      columns.forEach((data, c) => {
        for (let i = 0; i < sum.length; i++) sum[i] += weights[c] * data[i];
      });
      return Float32Array.from(sum);
    };
  }
  // Order statistics: each coordinate's n values sorted ascending; the kept ones summed in that
  // order (ties are equal values, so the order among them cannot change the sum).
  if (aggregation === "trimmed-mean" && options.trim === undefined) {
    throw new Error("aggregate: trimmed-mean needs the fraction to cut from each side (--trim)");
  }
  const k = aggregation === "median" ? 0 : trimCount(n, options.trim!);
  return (columns) => {
    const out = new Float32Array(columns[0].length);
    const values = new Float64Array(n);
    for (let i = 0; i < out.length; i++) {
      for (let c = 0; c < n; c++) values[c] = columns[c][i];
      values.sort();
      if (aggregation === "median") {
        // The mean of the two middle values for even n (as numpy's median), in float64.
        out[i] = n % 2 ? values[(n - 1) / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
      } else {
        let sum = 0;
        for (let c = k; c < n - k; c++) sum += values[c];
        out[i] = sum / (n - 2 * k);
      }
    }
    return out;
  };
}
