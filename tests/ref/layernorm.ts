// Float64 reference for layer normalisation over the last dimension (PyTorch semantics: biased
// variance, ε inside the square root) and its vector-Jacobian product.

export interface LayerNormRef {
  y: Float64Array;
  mean: Float64Array;
  rstd: Float64Array;
}

/** y[r] = (x[r] − μ_r)·r_r ⊙ w + b for each of the `rows` rows of length `cols`. */
export function layerNormRef(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  bias: ArrayLike<number>,
  cols: number,
  eps: number,
): LayerNormRef {
  const rows = x.length / cols;
  const y = new Float64Array(x.length);
  const mean = new Float64Array(rows);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let sum = 0;
    for (let c = 0; c < cols; c++) sum += x[base + c];
    const mu = sum / cols;
    let squares = 0;
    for (let c = 0; c < cols; c++) squares += (x[base + c] - mu) ** 2;
    const s = 1 / Math.sqrt(squares / cols + eps);
    for (let c = 0; c < cols; c++) y[base + c] = (x[base + c] - mu) * s * weight[c] + bias[c];
    mean[r] = mu;
    rstd[r] = s;
  }
  return { y, mean, rstd };
}

export interface LayerNormGrads {
  dx: Float64Array;
  dweight: Float64Array;
  dbias: Float64Array;
}

/** Gradients of Σ dy ⊙ y with respect to x, weight and bias. */
export function layerNormBackwardRef(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  dy: ArrayLike<number>,
  cols: number,
  eps: number,
): LayerNormGrads {
  const rows = x.length / cols;
  const { mean, rstd } = layerNormRef(x, weight, new Float64Array(cols), cols, eps);
  const dx = new Float64Array(x.length);
  const dweight = new Float64Array(cols);
  const dbias = new Float64Array(cols);
  const xhat = (i: number, r: number) => (x[i] - mean[r]) * rstd[r];
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let meanG = 0, meanGXhat = 0;
    for (let c = 0; c < cols; c++) {
      const g = dy[base + c] * weight[c];
      meanG += g / cols;
      meanGXhat += g * xhat(base + c, r) / cols;
      dweight[c] += dy[base + c] * xhat(base + c, r);
      dbias[c] += dy[base + c];
    }
    for (let c = 0; c < cols; c++) {
      const g = dy[base + c] * weight[c];
      dx[base + c] = rstd[r] * (g - meanG - xhat(base + c, r) * meanGXhat);
    }
  }
  return { dx, dweight, dbias };
}
