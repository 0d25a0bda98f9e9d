// Float64 reference for the SiLU-gated product y = silu(g) ⊙ u (Llama's MLP, before down_proj)
// and its vector-Jacobian product.

const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));

export function swigluRef(gate: ArrayLike<number>, up: ArrayLike<number>): Float64Array {
  return Float64Array.from(gate, (g, i) => g * sigmoid(g) * up[i]);
}

export interface SwigluGrads {
  dgate: Float64Array;
  dup: Float64Array;
}

/** dgate = dy ⊙ u ⊙ silu'(g), silu'(g) = σ(g) + g·σ(g)·(1 − σ(g)); dup = dy ⊙ silu(g). */
export function swigluBackwardRef(
  gate: ArrayLike<number>,
  up: ArrayLike<number>,
  dy: ArrayLike<number>,
): SwigluGrads {
  const dgate = Float64Array.from(gate, (g, i) => {
    const s = sigmoid(g);
    return dy[i] * up[i] * (s + g * s * (1 - s));
  });
  const dup = Float64Array.from(gate, (g, i) => dy[i] * g * sigmoid(g));
  return { dgate, dup };
}
