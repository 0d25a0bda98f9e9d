// Float64 reference for rotary position embeddings written as Hugging Face's Llama code reads:
// emb = cat(freqs, freqs), cos = cos(t·emb), sin = sin(t·emb), rotate_half(x) = cat(−x₂, x₁),
// y = x·cos + rotate_half(x)·sin; x is [B, T, heads·D] with position t = x's second index.

export interface RopeShape {
  B: number;
  T: number;
  heads: number;
  D: number;
}

/** Applies `perHead(row, cos, sin)` to each head's row (a copy), writing the result. */
function eachHead(
  x: ArrayLike<number>,
  frequencies: ArrayLike<number>,
  s: RopeShape,
  perHead: (row: Float64Array, cos: Float64Array, sin: Float64Array) => Float64Array,
): Float64Array {
  const { B, T, heads, D } = s;
  const out = new Float64Array(B * T * heads * D);
  const cos = new Float64Array(D), sin = new Float64Array(D);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let d = 0; d < D; d++) {
        const emb = t * frequencies[d % (D / 2)];
        cos[d] = Math.cos(emb);
        sin[d] = Math.sin(emb);
      }
      for (let h = 0; h < heads; h++) {
        const start = ((b * T + t) * heads + h) * D;
        out.set(perHead(Float64Array.from({ length: D }, (_, d) => x[start + d]), cos, sin), start);
      }
    }
  }
  return out;
}

function rotateHalf(v: Float64Array): Float64Array {
  const half = v.length / 2;
  return Float64Array.from(v, (_, d) => d < half ? -v[d + half] : v[d - half]);
}

export function ropeRef(
  x: ArrayLike<number>,
  frequencies: ArrayLike<number>,
  s: RopeShape,
): Float64Array {
  return eachHead(x, frequencies, s, (row, cos, sin) => {
    const rotated = rotateHalf(row);
    return row.map((v, d) => v * cos[d] + rotated[d] * sin[d]);
  });
}

/**
 * dx for upstream dy: y = cos⊙x + sin⊙(R·x) with R = rotate_half as a matrix, so
 * dx = cos⊙dy + Rᵀ·(sin⊙dy), and Rᵀ = −R (R is a rotation by a right angle in each pair).
 */
export function ropeBackwardRef(
  dy: ArrayLike<number>,
  frequencies: ArrayLike<number>,
  s: RopeShape,
): Float64Array {
  return eachHead(dy, frequencies, s, (row, cos, sin) => {
    const rotated = rotateHalf(row.map((v, d) => v * sin[d]));
    return row.map((v, d) => v * cos[d] - rotated[d]);
  });
}
