// A client's update: what its shared tensors moved from the global it started from, in float64,
// and its L2 norm over all shared tensors together. Update validation bounds this norm
// (fed/validate_update.ts); differential privacy clips it (fed/privacy.ts). Names are walked in
// the global's order, so every sum runs in one fixed order.
import type { NamedTensor } from "../model/safetensors.ts";

/** client − global for each of the global's tensors (the client must hold every one of them). */
export function updateOf(
  global: ReadonlyMap<string, NamedTensor>,
  client: ReadonlyMap<string, NamedTensor>,
): Map<string, Float64Array> {
  const update = new Map<string, Float64Array>();
  for (const [name, start] of global) {
    const now = client.get(name);
    if (!now || now.data.length !== start.data.length) {
      throw new Error(`update: the client's ${name} does not match the global's [${start.shape}]`);
    }
    const delta = new Float64Array(start.data.length);
    for (let i = 0; i < delta.length; i++) delta[i] = now.data[i] - start.data[i];
    update.set(name, delta);
  }
  return update;
}

/** The float64 sum of squares of every value, in map order then index order. */
export function sumOfSquares(tensors: ReadonlyMap<string, ArrayLike<number>>): number {
  let sum = 0;
  for (const values of tensors.values()) {
    for (let i = 0; i < values.length; i++) sum += values[i] * values[i];
  }
  return sum;
}

/** The L2 norm of all the tensors together, as one vector. */
export function l2Norm(tensors: ReadonlyMap<string, ArrayLike<number>>): number {
  return Math.sqrt(sumOfSquares(tensors));
}
