// Float64 reference for the CoMiGS top-k gate and its vector-Jacobian product.

/** Indices of the k largest values of a row, ties to the lowest index (a stable sort). */
export function topkIndices(row: ArrayLike<number>, k: number): number[] {
  const order = Array.from({ length: row.length }, (_, j) => j);
  order.sort((a, b) => row[b] - row[a] || a - b);
  return order.slice(0, Math.min(k, row.length));
}

function softmax(values: number[]): number[] {
  const max = Math.max(...values);
  const e = values.map((v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** Gates [N, E]: k ≥ 2 softmax over the top-k logits; k = 1 the max of softmax over all E. */
export function topkGateRef(logits: ArrayLike<number>, experts: number, k: number): Float64Array {
  const rows = logits.length / experts;
  const gates = new Float64Array(logits.length);
  for (let r = 0; r < rows; r++) {
    const row = Array.from({ length: experts }, (_, j) => logits[r * experts + j]);
    const chosen = topkIndices(row, k);
    if (chosen.length === 1) {
      gates[r * experts + chosen[0]] = softmax(row)[chosen[0]];
    } else {
      const w = softmax(chosen.map((j) => row[j]));
      chosen.forEach((j, i) => gates[r * experts + j] = w[i]);
    }
  }
  return gates;
}

/** dlogits for upstream dgates, with the selection held fixed. */
export function topkGateBackwardRef(
  logits: ArrayLike<number>,
  dgates: ArrayLike<number>,
  experts: number,
  k: number,
): Float64Array {
  const rows = logits.length / experts;
  const dlogits = new Float64Array(logits.length);
  for (let r = 0; r < rows; r++) {
    const at = (j: number) => r * experts + j;
    const row = Array.from({ length: experts }, (_, j) => logits[at(j)]);
    const chosen = topkIndices(row, k);
    if (chosen.length === 1) {
      // p_m over all E: d p_m / d l_j = p_m·(δ_jm − p_j).
      const m = chosen[0];
      const p = softmax(row);
      for (let j = 0; j < experts; j++) {
        dlogits[at(j)] = dgates[at(m)] * p[m] * ((j === m ? 1 : 0) - p[j]);
      }
    } else {
      const w = softmax(chosen.map((j) => row[j]));
      const wg = chosen.reduce((s, j, i) => s + w[i] * dgates[at(j)], 0);
      chosen.forEach((j, i) => dlogits[at(j)] = w[i] * (dgates[at(j)] - wg));
    }
  }
  return dlogits;
}
