// Float64 reference for the mixture of LoRA experts over a frozen SwiGLU MLP (the Llama family's;
// Hugging Face layout, y = x·Wᵀ, no biases), built expert by expert from the matmul, LoRA and
// SwiGLU references (deliberately not the fused algebra the kernel uses):
//   g_j = x·W_gᵀ + s·(x·A_gjᵀ)·B_gjᵀ,  u_j = x·W_uᵀ + s·(x·A_ujᵀ)·B_ujᵀ,  h_j = silu(g_j) ⊙ u_j,
//   y_j = h_j·W_dᵀ + s·(h_j·A_djᵀ)·B_djᵀ,  y = Σ_j gate[:, j]·y_j.
// Row-major arrays: x [N, C], gate [N, E], W_g and W_u [I, C], W_d [C, I], gateA and upA
// [E, r, C], gateB and upB [E, I, r], downA [E, r, I], downB [E, C, r]. The shape's `hidden` is
// the intermediate size I.
import { loraBackwardRef, loraRef } from "./lora.ts";
import { expertSlice, gatedSum, gateGrad, gateRows, matmul } from "./mixture.ts";
import type { MixtureShape } from "./mixture.ts";
import { swigluBackwardRef, swigluRef } from "./swiglu.ts";

export interface MoeSwigluInputs {
  x: Float64Array;
  gate: Float64Array;
  gateWeight: Float64Array;
  upWeight: Float64Array;
  downWeight: Float64Array;
  gateA: Float64Array;
  gateB: Float64Array;
  upA: Float64Array;
  upB: Float64Array;
  downA: Float64Array;
  downB: Float64Array;
}

/** The differentiable inputs' gradients (the frozen weights have none). */
export type MoeSwigluGrads = Omit<MoeSwigluInputs, "gateWeight" | "upWeight" | "downWeight">;

interface Expert {
  g: Float64Array;
  u: Float64Array;
  h: Float64Array;
  y: Float64Array;
}

/** The LoRA shapes of the first layer (C → I) and of down (I → C). */
function loraShapes(shape: MixtureShape) {
  const { rows, embd, hidden, rank } = shape;
  return {
    first: { rows, inFeatures: embd, outFeatures: hidden, rank },
    down: { rows, inFeatures: hidden, outFeatures: embd, rank },
  };
}

/** Every expert's gate and up projections, its SwiGLU product and its output. */
function experts(shape: MixtureShape, v: MoeSwigluInputs, scale: number): Expert[] {
  const { rows: n, embd: c, hidden: i, experts: e } = shape;
  const { first, down } = loraShapes(shape);
  const gateBase = matmul(v.x, v.gateWeight, n, c, i, { transB: true });
  const upBase = matmul(v.x, v.upWeight, n, c, i, { transB: true });
  return Array.from({ length: e }, (_, j) => {
    const at = (stacked: Float64Array) => expertSlice(stacked, j, e);
    const g = loraRef(first, v.x, gateBase, at(v.gateA), at(v.gateB), scale);
    const u = loraRef(first, v.x, upBase, at(v.upA), at(v.upB), scale);
    const h = swigluRef(g, u);
    const downBase = matmul(h, v.downWeight, n, i, c, { transB: true });
    const y = loraRef(down, h, downBase, at(v.downA), at(v.downB), scale);
    return { g, u, h, y };
  });
}

export function moeSwigluRef(shape: MixtureShape, v: MoeSwigluInputs, scale: number): Float64Array {
  return gatedSum(shape, experts(shape, v, scale).map((expert) => expert.y), v.gate);
}

/** The vector-Jacobian products with dy [N, C] for every differentiable input. */
export function moeSwigluBackwardRef(
  shape: MixtureShape,
  v: MoeSwigluInputs,
  scale: number,
  dy: ArrayLike<number>,
): MoeSwigluGrads {
  const { rows: n, embd: c, hidden: i, experts: e } = shape;
  const { first, down } = loraShapes(shape);
  const all = experts(shape, v, scale);
  const grads: MoeSwigluGrads = {
    x: new Float64Array(n * c),
    gate: gateGrad(shape, all.map((expert) => expert.y), dy),
    gateA: new Float64Array(v.gateA.length),
    gateB: new Float64Array(v.gateB.length),
    upA: new Float64Array(v.upA.length),
    upB: new Float64Array(v.upB.length),
    downA: new Float64Array(v.downA.length),
    downB: new Float64Array(v.downB.length),
  };
  all.forEach((expert, j) => {
    const at = (stacked: Float64Array) => expertSlice(stacked, j, e);
    const dyj = gateRows(dy, v.gate, j, shape);
    const dDown = loraBackwardRef(down, expert.h, at(v.downA), at(v.downB), scale, dyj);
    // dh = dy_j·W_d (the frozen down's VJP; W_d is [C, I]) + the down LoRA's.
    const dh = matmul(dyj, v.downWeight, n, c, i);
    for (let k = 0; k < dh.length; k++) dh[k] += dDown.dx[k];
    const { dgate: dg, dup: du } = swigluBackwardRef(expert.g, expert.u, dh);
    const dGate = loraBackwardRef(first, v.x, at(v.gateA), at(v.gateB), scale, dg);
    const dUp = loraBackwardRef(first, v.x, at(v.upA), at(v.upB), scale, du);
    const dxGate = matmul(dg, v.gateWeight, n, i, c);
    const dxUp = matmul(du, v.upWeight, n, i, c);
    for (let k = 0; k < grads.x.length; k++) {
      grads.x[k] += dxGate[k] + dGate.dx[k] + dxUp[k] + dUp.dx[k];
    }
    const parts = { gate: dGate, up: dUp, down: dDown };
    for (const [layer, { da, db }] of Object.entries(parts)) {
      at(grads[`${layer}A` as keyof MoeSwigluGrads]).set(da);
      at(grads[`${layer}B` as keyof MoeSwigluGrads]).set(db);
    }
  });
  return grads;
}
