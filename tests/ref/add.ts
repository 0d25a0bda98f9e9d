// Float64 reference for the elementwise add and its vector-Jacobian product.

export function addRef(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  return Float64Array.from(a, (v, i) => v + b[i]);
}

/** ∂(a + b)/∂a = ∂(a + b)/∂b = I: both inputs receive the upstream gradient unchanged. */
export function addBackwardRef(dout: ArrayLike<number>): { da: Float64Array; db: Float64Array } {
  return { da: Float64Array.from(dout), db: Float64Array.from(dout) };
}
