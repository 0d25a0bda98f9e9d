// Float64 reference for RMS normalisation over the last dimension (Hugging Face's LlamaRMSNorm:
// ε inside the square root, weight applied after normalising) and its vector-Jacobian product.

export interface RmsNormRef {
  y: Float64Array;
  rstd: Float64Array;
}

/** y[r] = x[r]·s_r ⊙ w, s_r = 1/√(mean(x[r]²) + ε), for each row of length `cols`. */
export function rmsNormRef(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  cols: number,
  eps: number,
): RmsNormRef {
  const rows = x.length / cols;
  const y = new Float64Array(x.length);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let squares = 0;
    for (let c = 0; c < cols; c++) squares += x[base + c] ** 2;
    const s = 1 / Math.sqrt(squares / cols + eps);
    for (let c = 0; c < cols; c++) y[base + c] = weight[c] * (x[base + c] * s);
    rstd[r] = s;
  }
  return { y, rstd };
}

export interface RmsNormGrads {
  dx: Float64Array;
  dweight: Float64Array;
}

/** Gradients of Σ dy ⊙ y with respect to x and weight. */
export function rmsNormBackwardRef(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  dy: ArrayLike<number>,
  cols: number,
  eps: number,
): RmsNormGrads {
  const rows = x.length / cols;
  const { rstd } = rmsNormRef(x, weight, cols, eps);
  const dx = new Float64Array(x.length);
  const dweight = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    // ∂y_c/∂x_k = w_c·s·(δ_ck − x_c·x_k·s²/C): dx_k = s·(g_k − x_k·s²·Σ_c g_c·x_c/C).
    let gx = 0;
    for (let c = 0; c < cols; c++) {
      gx += dy[base + c] * weight[c] * x[base + c];
      dweight[c] += dy[base + c] * x[base + c] * rstd[r];
    }
    const s = rstd[r];
    for (let c = 0; c < cols; c++) {
      const g = dy[base + c] * weight[c];
      dx[base + c] = s * (g - x[base + c] * s * s * gx / cols);
    }
  }
  return { dx, dweight };
}
