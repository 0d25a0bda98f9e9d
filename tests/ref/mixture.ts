// Float64 pieces shared by the references of the two mixtures of LoRA experts (GPT-2's GELU MLP,
// tests/ref/moe_mlp.ts; Llama's SwiGLU MLP, tests/ref/moe_swiglu.ts): plain products, the
// experts' slices of stacked tensors, and the gating of whole expert outputs, y = Σ_j gate[:, j]·y_j
// with dgate[n, j] = dy[n]·y_j[n]. Row-major arrays.

/** The shape of a mixture: N rows, C = embd, H = hidden (Llama's intermediate I), r, E. */
export interface MixtureShape {
  rows: number;
  embd: number;
  hidden: number;
  rank: number;
  experts: number;
}

/** out [M, P] = a [M, K]·b [K, P] (+ bias [P]); with transB, b is stored [P, K]. */
export function matmul(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  m: number,
  k: number,
  p: number,
  opts: { bias?: ArrayLike<number>; transB?: boolean } = {},
): Float64Array {
  const out = new Float64Array(m * p);
  for (let i = 0; i < m; i++) {
    for (let o = 0; o < p; o++) {
      let sum = opts.bias ? opts.bias[o] : 0;
      for (let l = 0; l < k; l++) {
        sum += a[i * k + l] * (opts.transB ? b[o * k + l] : b[l * p + o]);
      }
      out[i * p + o] = sum;
    }
  }
  return out;
}

/** Expert j's slice of a stacked [E, ...] tensor (a view: writing it writes the stack). */
export function expertSlice(stacked: Float64Array, j: number, experts: number): Float64Array {
  const size = stacked.length / experts;
  return stacked.subarray(j * size, (j + 1) * size);
}

/** gate[:, j] ⊙ rows of m ([N, width]). */
export function gateRows(
  m: ArrayLike<number>,
  gate: ArrayLike<number>,
  j: number,
  shape: MixtureShape,
): Float64Array {
  const width = m.length / shape.rows;
  return Float64Array.from(m, (v, i) => gate[Math.floor(i / width) * shape.experts + j] * v);
}

/** y [N, C] = Σ_j gate[:, j] ⊙ ys[j]. */
export function gatedSum(
  shape: MixtureShape,
  ys: readonly Float64Array[],
  gate: ArrayLike<number>,
): Float64Array {
  const y = new Float64Array(shape.rows * shape.embd);
  ys.forEach((yj, j) => {
    const gated = gateRows(yj, gate, j, shape);
    for (let i = 0; i < y.length; i++) y[i] += gated[i];
  });
  return y;
}

/** dgate [N, E]: dgate[n, j] = dy[n]·ys[j][n], the gate's share of the vector-Jacobian product. */
export function gateGrad(
  shape: MixtureShape,
  ys: readonly Float64Array[],
  dy: ArrayLike<number>,
): Float64Array {
  const { rows: n, embd: c, experts: e } = shape;
  const grad = new Float64Array(n * e);
  ys.forEach((yj, j) => {
    for (let row = 0; row < n; row++) {
      let sum = 0;
      for (let col = 0; col < c; col++) sum += dy[row * c + col] * yj[row * c + col];
      grad[row * e + j] = sum;
    }
  });
  return grad;
}
