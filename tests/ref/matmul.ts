// Float64 reference for C = op(A)·op(B) (+ bias), batched, and its backward. Operands are flat
// arrays in storage layout: a is [batch, M, K] ([batch, K, M] with transA), b is [K, N]
// ([N, K] with transB), or per batch when bBatched. Every entry also comes with its magnitude
// scale S = Σ_k |op(A)[m][k]·op(B)[k][n]| (+ |bias|), which bounds the f32 rounding error.

export interface MatmulShape {
  batch: number;
  M: number;
  K: number;
  N: number;
  transA: boolean;
  transB: boolean;
  bBatched: boolean;
}

/** Index of op(A)_z[m][k] and op(B)_z[k][n] in storage. */
export function operandIndex(s: MatmulShape) {
  return {
    a: (z: number, m: number, k: number) => z * s.M * s.K + (s.transA ? k * s.M + m : m * s.K + k),
    b: (z: number, k: number, n: number) =>
      (s.bBatched ? z : 0) * s.K * s.N + (s.transB ? n * s.K + k : k * s.N + n),
  };
}

/** One output entry C_z[m][n] and its scale. */
export function matmulEntryRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  bias: ArrayLike<number> | null,
  s: MatmulShape,
  z: number,
  m: number,
  n: number,
): { value: number; scale: number } {
  const at = operandIndex(s);
  let value = bias ? bias[n] : 0, scale = Math.abs(value);
  for (let k = 0; k < s.K; k++) {
    const p = a[at.a(z, m, k)] * b[at.b(z, k, n)];
    value += p;
    scale += Math.abs(p);
  }
  return { value, scale };
}

/** C [batch, M, N] and the scale of every entry. */
export function matmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  bias: ArrayLike<number> | null,
  s: MatmulShape,
): { value: Float64Array; scale: Float64Array } {
  const value = new Float64Array(s.batch * s.M * s.N), scale = new Float64Array(value.length);
  for (let z = 0; z < s.batch; z++) {
    for (let m = 0; m < s.M; m++) {
      for (let n = 0; n < s.N; n++) {
        const e = matmulEntryRef(a, b, bias, s, z, m, n);
        const i = (z * s.M + m) * s.N + n;
        value[i] = e.value;
        scale[i] = e.scale;
      }
    }
  }
  return { value, scale };
}

export interface MatmulGrads {
  /** In a's storage layout. */
  dA: Float64Array;
  /** In b's storage layout, summed over the batch when b is shared. */
  dB: Float64Array;
  dBias: Float64Array;
  /** Σ of |terms| behind each gradient entry, for error bounds. */
  dAScale: Float64Array;
  dBScale: Float64Array;
  dBiasScale: Float64Array;
}

/** The vector-Jacobian product of C with upstream gradient dC [batch, M, N]. */
export function matmulBackwardRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  dC: ArrayLike<number>,
  s: MatmulShape,
): MatmulGrads {
  const at = operandIndex(s);
  const g: MatmulGrads = {
    dA: new Float64Array(s.batch * s.M * s.K),
    dB: new Float64Array((s.bBatched ? s.batch : 1) * s.K * s.N),
    dBias: new Float64Array(s.N),
    dAScale: new Float64Array(s.batch * s.M * s.K),
    dBScale: new Float64Array((s.bBatched ? s.batch : 1) * s.K * s.N),
    dBiasScale: new Float64Array(s.N),
  };
  for (let z = 0; z < s.batch; z++) {
    for (let m = 0; m < s.M; m++) {
      for (let n = 0; n < s.N; n++) {
        const d = dC[(z * s.M + m) * s.N + n];
        g.dBias[n] += d;
        g.dBiasScale[n] += Math.abs(d);
        for (let k = 0; k < s.K; k++) {
          const ia = at.a(z, m, k), ib = at.b(z, k, n);
          g.dA[ia] += d * b[ib];
          g.dAScale[ia] += Math.abs(d * b[ib]);
          g.dB[ib] += a[ia] * d;
          g.dBScale[ib] += Math.abs(a[ia] * d);
        }
      }
    }
  }
  return g;
}

/** One entry of dA, at op(A) coordinates (z, m, k): Σ_n dC_z[m][n]·op(B)_z[k][n]. */
export function dAEntryRef(
  b: ArrayLike<number>,
  dC: ArrayLike<number>,
  s: MatmulShape,
  z: number,
  m: number,
  k: number,
): { value: number; scale: number } {
  const at = operandIndex(s);
  let value = 0, scale = 0;
  for (let n = 0; n < s.N; n++) {
    const p = dC[(z * s.M + m) * s.N + n] * b[at.b(z, k, n)];
    value += p;
    scale += Math.abs(p);
  }
  return { value, scale };
}

/** One entry of dB, at op(B) coordinates (z, k, n), summed over the batch when b is shared. */
export function dBEntryRef(
  a: ArrayLike<number>,
  dC: ArrayLike<number>,
  s: MatmulShape,
  z: number,
  k: number,
  n: number,
): { value: number; scale: number } {
  const at = operandIndex(s);
  let value = 0, scale = 0;
  for (let zz = s.bBatched ? z : 0; zz < (s.bBatched ? z + 1 : s.batch); zz++) {
    for (let m = 0; m < s.M; m++) {
      const p = a[at.a(zz, m, k)] * dC[(zz * s.M + m) * s.N + n];
      value += p;
      scale += Math.abs(p);
    }
  }
  return { value, scale };
}
