// Float64 reference for the mixture-of-LoRA-experts MLP, built expert by expert from the LoRA and
// GELU references (deliberately not the fused algebra the kernel uses):
//   pre_j = x·W_f + b_f + s·(x·A_fjᵀ)·B_fjᵀ,  h_j = gelu(pre_j),
//   y_j = h_j·W_p + b_p + s·(h_j·A_pjᵀ)·B_pjᵀ,  y = Σ_j gate[:, j]·y_j.
// Row-major arrays: x [N, C], gate [N, E], W_f [C, H], b_f [H], W_p [H, C], b_p [C],
// fcA [E, r, C], fcB [E, H, r], projA [E, r, H], projB [E, C, r].
import { geluBackwardRef, geluRef } from "./gelu.ts";
import { loraBackwardRef, loraRef } from "./lora.ts";

export interface MoeMlpShape {
  rows: number;
  embd: number;
  hidden: number;
  rank: number;
  experts: number;
}

export interface MoeMlpInputs {
  x: Float64Array;
  gate: Float64Array;
  fcWeight: Float64Array;
  fcBias: Float64Array;
  projWeight: Float64Array;
  projBias: Float64Array;
  fcA: Float64Array;
  fcB: Float64Array;
  projA: Float64Array;
  projB: Float64Array;
}

export interface MoeMlpGrads {
  x: Float64Array;
  gate: Float64Array;
  fcA: Float64Array;
  fcB: Float64Array;
  projA: Float64Array;
  projB: Float64Array;
}

/** out [M, P] = a [M, K]·b [K, P] (+ bias [P]); with transB, b is stored [P, K]. */
function matmul(
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

/** Expert j's slice of a stacked [E, ...] tensor. */
function slice(stacked: Float64Array, j: number, experts: number): Float64Array {
  const size = stacked.length / experts;
  return stacked.subarray(j * size, (j + 1) * size);
}

/** gate[:, j] ⊙ rows of m ([N, width]). */
function gateRows(m: ArrayLike<number>, gate: ArrayLike<number>, j: number, shape: MoeMlpShape) {
  const width = m.length / shape.rows;
  return Float64Array.from(m, (v, i) => gate[Math.floor(i / width) * shape.experts + j] * v);
}

interface Expert {
  pre: Float64Array;
  h: Float64Array;
  y: Float64Array;
}

/** Every expert's pre-activation, activation and output. */
function experts(shape: MoeMlpShape, v: MoeMlpInputs, scale: number): Expert[] {
  const { rows: n, embd: c, hidden: h, rank: r, experts: e } = shape;
  const fcShape = { rows: n, inFeatures: c, outFeatures: h, rank: r };
  const projShape = { rows: n, inFeatures: h, outFeatures: c, rank: r };
  const base = matmul(v.x, v.fcWeight, n, c, h, { bias: v.fcBias });
  return Array.from({ length: e }, (_, j) => {
    const pre = loraRef(fcShape, v.x, base, slice(v.fcA, j, e), slice(v.fcB, j, e), scale);
    const act = geluRef(pre);
    const projBase = matmul(act, v.projWeight, n, h, c, { bias: v.projBias });
    const y = loraRef(projShape, act, projBase, slice(v.projA, j, e), slice(v.projB, j, e), scale);
    return { pre, h: act, y };
  });
}

export function moeMlpRef(shape: MoeMlpShape, v: MoeMlpInputs, scale: number): Float64Array {
  const y = new Float64Array(shape.rows * shape.embd);
  experts(shape, v, scale).forEach((expert, j) => {
    const gated = gateRows(expert.y, v.gate, j, shape);
    for (let i = 0; i < y.length; i++) y[i] += gated[i];
  });
  return y;
}

/** The vector-Jacobian products with dy [N, C] for every differentiable input. */
export function moeMlpBackwardRef(
  shape: MoeMlpShape,
  v: MoeMlpInputs,
  scale: number,
  dy: ArrayLike<number>,
): MoeMlpGrads {
  const { rows: n, embd: c, hidden: h, rank: r, experts: e } = shape;
  const fcShape = { rows: n, inFeatures: c, outFeatures: h, rank: r };
  const projShape = { rows: n, inFeatures: h, outFeatures: c, rank: r };
  const grads: MoeMlpGrads = {
    x: new Float64Array(n * c),
    gate: new Float64Array(n * e),
    fcA: new Float64Array(v.fcA.length),
    fcB: new Float64Array(v.fcB.length),
    projA: new Float64Array(v.projA.length),
    projB: new Float64Array(v.projB.length),
  };
  experts(shape, v, scale).forEach((expert, j) => {
    for (let row = 0; row < n; row++) {
      let sum = 0;
      for (let col = 0; col < c; col++) sum += dy[row * c + col] * expert.y[row * c + col];
      grads.gate[row * e + j] = sum;
    }
    const dyj = gateRows(dy, v.gate, j, shape);
    const proj = loraBackwardRef(
      projShape,
      expert.h,
      slice(v.projA, j, e),
      slice(v.projB, j, e),
      scale,
      dyj,
    );
    const dh = matmul(dyj, v.projWeight, n, c, h, { transB: true });
    for (let i = 0; i < dh.length; i++) dh[i] += proj.dx[i];
    const dpre = geluBackwardRef(expert.pre, dh);
    const fc = loraBackwardRef(fcShape, v.x, slice(v.fcA, j, e), slice(v.fcB, j, e), scale, dpre);
    const dxBase = matmul(dpre, v.fcWeight, n, h, c, { transB: true });
    for (let i = 0; i < grads.x.length; i++) grads.x[i] += fc.dx[i] + dxBase[i];
    slice(grads.fcA, j, e).set(fc.da);
    slice(grads.fcB, j, e).set(fc.db);
    slice(grads.projA, j, e).set(proj.da);
    slice(grads.projB, j, e).set(proj.db);
  });
  return grads;
}
