// Float64 reference for GELU (tanh approximation) and its derivative.
const C = Math.sqrt(2 / Math.PI);

export function geluRef(x: ArrayLike<number>): Float64Array {
  return Float64Array.from(x, (v) => 0.5 * v * (1 + Math.tanh(C * (v + 0.044715 * v ** 3))));
}

/** dx = dy ⊙ gelu'(x). */
export function geluBackwardRef(x: ArrayLike<number>, dy: ArrayLike<number>): Float64Array {
  return Float64Array.from(x, (v, i) => {
    const t = Math.tanh(C * (v + 0.044715 * v ** 3));
    return dy[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * C * (1 + 3 * 0.044715 * v * v));
  });
}
