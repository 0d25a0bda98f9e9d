// Float64 reference for the row softmax over the last dimension and its backward.

/** y = softmax of each row of `cols` elements (the row max subtracted before exp). */
export function softmaxRef(x: ArrayLike<number>, cols: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let base = 0; base < x.length; base += cols) {
    let max = -Infinity;
    for (let i = 0; i < cols; i++) max = Math.max(max, x[base + i]);
    let sum = 0;
    for (let i = 0; i < cols; i++) sum += y[base + i] = Math.exp(x[base + i] - max);
    for (let i = 0; i < cols; i++) y[base + i] /= sum;
  }
  return y;
}

/** dx = y ⊙ (dy − Σ dy⊙y) per row, the vector-Jacobian product of softmax at y. */
export function softmaxBackwardRef(
  y: ArrayLike<number>,
  dy: ArrayLike<number>,
  cols: number,
): Float64Array {
  const dx = new Float64Array(y.length);
  for (let base = 0; base < y.length; base += cols) {
    let dot = 0;
    for (let i = 0; i < cols; i++) dot += dy[base + i] * y[base + i];
    for (let i = 0; i < cols; i++) dx[base + i] = y[base + i] * (dy[base + i] - dot);
  }
  return dx;
}
