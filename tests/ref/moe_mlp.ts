// Float64 reference for the mixture-of-LoRA-experts MLP, built expert by expert from the LoRA and
// GELU references (deliberately not the fused algebra the kernel uses):
//   pre_j = x·W_f + b_f + s·(x·A_fjᵀ)·B_fjᵀ,  h_j = gelu(pre_j),
//   y_j = h_j·W_p + b_p + s·(h_j·A_pjᵀ)·B_pjᵀ,  y = Σ_j gate[:, j]·y_j.
// Row-major arrays: x [N, C], gate [N, E], W_f [C, H], b_f [H], W_p [H, C], b_p [C],
// fcA [E, r, C], fcB [E, H, r], projA [E, r, H], projB [E, C, r].
import { geluBackwardRef, geluRef } from "./gelu.ts";
import { loraBackwardRef, loraRef } from "./lora.ts";
import {
  expertSlice as slice,
  gatedSum,
  gateGrad,
  gateRows,
  matmul,
  type MixtureShape,
} from "./mixture.ts";

export type MoeMlpShape = MixtureShape;

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
  return gatedSum(shape, experts(shape, v, scale).map((expert) => expert.y), v.gate);
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
  const all = experts(shape, v, scale);
  grads.gate.set(gateGrad(shape, all.map((expert) => expert.y), dy));
  all.forEach((expert, j) => {
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
