// Float64 reference for a LoRA-adapted linear layer: y = base + s·(x·Aᵀ)·Bᵀ, and its
// vector-Jacobian products. Row-major arrays: x [N, in], base [N, out], A [r, in], B [out, r].

export interface LoraShape {
  rows: number;
  inFeatures: number;
  outFeatures: number;
  rank: number;
}

/** u = x·Aᵀ [N, r]. */
function down(shape: LoraShape, x: ArrayLike<number>, a: ArrayLike<number>): Float64Array {
  const { rows, inFeatures: nIn, rank } = shape;
  const u = new Float64Array(rows * rank);
  for (let n = 0; n < rows; n++) {
    for (let j = 0; j < rank; j++) {
      let sum = 0;
      for (let i = 0; i < nIn; i++) sum += x[n * nIn + i] * a[j * nIn + i];
      u[n * rank + j] = sum;
    }
  }
  return u;
}

export function loraRef(
  shape: LoraShape,
  x: ArrayLike<number>,
  base: ArrayLike<number>,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  scale: number,
): Float64Array {
  const { rows, outFeatures: nOut, rank } = shape;
  const u = down(shape, x, a);
  const y = Float64Array.from(base);
  for (let n = 0; n < rows; n++) {
    for (let o = 0; o < nOut; o++) {
      let sum = 0;
      for (let j = 0; j < rank; j++) sum += u[n * rank + j] * b[o * rank + j];
      y[n * nOut + o] += scale * sum;
    }
  }
  return y;
}

export interface LoraGrads {
  dx: Float64Array;
  dbase: Float64Array;
  da: Float64Array;
  db: Float64Array;
}

/** dbase = dy, dB = s·dyᵀ·u, du = s·dy·B, dA = duᵀ·x, dx = du·A. */
export function loraBackwardRef(
  shape: LoraShape,
  x: ArrayLike<number>,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  scale: number,
  dy: ArrayLike<number>,
): LoraGrads {
  const { rows, inFeatures: nIn, outFeatures: nOut, rank } = shape;
  const u = down(shape, x, a);
  const du = new Float64Array(rows * rank);
  const db = new Float64Array(nOut * rank);
  const da = new Float64Array(rank * nIn);
  const dx = new Float64Array(rows * nIn);
  for (let n = 0; n < rows; n++) {
    for (let o = 0; o < nOut; o++) {
      const g = scale * dy[n * nOut + o];
      for (let j = 0; j < rank; j++) {
        du[n * rank + j] += g * b[o * rank + j];
        db[o * rank + j] += g * u[n * rank + j];
      }
    }
    for (let j = 0; j < rank; j++) {
      const d = du[n * rank + j];
      for (let i = 0; i < nIn; i++) {
        da[j * nIn + i] += d * x[n * nIn + i];
        dx[n * nIn + i] += d * a[j * nIn + i];
      }
    }
  }
  return { dbase: Float64Array.from(dy), db, da, dx };
}
