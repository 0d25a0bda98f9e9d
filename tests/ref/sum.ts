// Float64 references for column sums, totals and means, and their backward (broadcasts).

/** Column sums of x viewed as [rows, cols]. */
export function sumRowsRef(x: ArrayLike<number>, cols: number): Float64Array {
  const out = new Float64Array(cols);
  for (let i = 0; i < x.length; i++) out[i % cols] += x[i];
  return out;
}

/** dx[r][c] = dy[c]. */
export function sumRowsBackwardRef(dy: ArrayLike<number>, rows: number): Float64Array {
  const cols = dy.length;
  return Float64Array.from({ length: rows * cols }, (_, i) => dy[i % cols]);
}

export function sumRef(x: ArrayLike<number>): number {
  let total = 0;
  for (let i = 0; i < x.length; i++) total += x[i];
  return total;
}

export function meanRef(x: ArrayLike<number>): number {
  return sumRef(x) / x.length;
}

/** dx = dy · ∂total/∂x: dy everywhere for a sum, dy / n for a mean. */
export function totalBackwardRef(n: number, dy: number, mean: boolean): Float64Array {
  return new Float64Array(n).fill(mean ? dy / n : dy);
}
