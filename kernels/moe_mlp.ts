// The MLP of a CoMiGS block: a gated mixture of E LoRA experts sharing one frozen GPT-2 MLP
// (row-vector convention, PEFT shapes, experts' LoRA tensors stacked along a leading E):
//   pre_j = x·W_f + b_f + s·(x·A_fjᵀ)·B_fjᵀ,   h_j = gelu_tanh(pre_j),
//   y = Σ_j g_j·(h_j·W_p + b_p + s·(h_j·A_pjᵀ)·B_pjᵀ)
// Fused by linearity, so the two big frozen products run once whatever E is:
//   base = x·W_f + b_f (once),   m = Σ_j g_j·h_j,
//   y = m·W_p (once) + (Σ_j g_j)·b_p + s·Σ_j (g_j·u_pj)·B_pjᵀ,   u_fj = x·A_fjᵀ, u_pj = h_j·A_pjᵀ.
// Backward (each gradient only when asked for), with v_pj = dy·B_pj:
//   dm = dy·W_pᵀ (once),   dh_j = g_j·(dm + s·v_pj·A_pj),   dpre_j = dh_j ⊙ gelu'(pre_j),
//   v_fj = s·dpre_j·B_fj,   dx = (Σ_j dpre_j)·W_fᵀ (once) + Σ_j v_fj·A_fj,
//   dgate_j = dm·h_j + dy·b_p + s·u_pj·v_pj (row-wise dots: dy·y_j without forming y_j),
//   dA_fj = v_fjᵀ·x,  dB_fj = s·dpre_jᵀ·u_fj,  dA_pj = s·(g_j·v_pj)ᵀ·h_j,  dB_pj = s·dyᵀ·(g_j·u_pj).
// This is the one-branch case of the mixture in kernels/mixture.ts (Llama's SwiGLU MLP,
// kernels/moe_swiglu.ts, is the two-branch one): forward saves pre_j for every expert ([E, N, H];
// for the routed tokens only, [k·N, H], when dispatched sparsely) and each consumer recomputes
// h_j = gelu(pre_j) on load.
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { GELU } from "./activation.ts";
import { checkMixture, mixtureMlp, type MixtureOptions } from "./mixture.ts";

export interface MoeMlpWeights {
  fcWeight: Tensor; // [C, H] frozen (c_fc Conv1D weight)
  fcBias: Tensor; // [H]    frozen
  projWeight: Tensor; // [H, C] frozen (c_proj)
  projBias: Tensor; // [C]    frozen
  fcA: Tensor; // [E, r, C]   experts' c_fc lora_A, stacked
  fcB: Tensor; // [E, H, r]   c_fc lora_B
  projA: Tensor; // [E, r, H]   c_proj lora_A
  projB: Tensor; // [E, C, r]   c_proj lora_B
}

/** Every tensor's shape, in the letters of kernels/mixture.ts's checkMixture. */
const LAYOUT = "x [N, C], gate [N, E], fcWeight [C, H], fcBias [H], projWeight [H, C], " +
  "projBias [C], fcA [E, r, C], fcB [E, H, r], projA [E, r, H], projB [E, C, r]";
const FROZEN = ["fcWeight", "fcBias", "projWeight", "projBias"];

/** y [N, C] = Σ_j gate[n,j]·(h_j·W_p + b_p + s·(h_j·A_pjᵀ)·B_pjᵀ), h_j = gelu_tanh(x·W_f + b_f + s·(x·A_fjᵀ)·B_fjᵀ). */
export function moeMlp(
  tape: Tape,
  x: Tensor, /*[N, C]*/
  gate: Tensor, /*[N, E]*/
  weights: MoeMlpWeights,
  scale: number,
  opts: MixtureOptions = {},
): Tensor {
  const d = checkMixture("moeMlp", LAYOUT, { x, gate, ...weights }, FROZEN, scale, "H");
  const { fcWeight, fcBias, projWeight, projBias, fcA, fcB, projA, projB } = weights;
  // GPT-2's Conv1D weights are stored [in, out].
  const fc = { name: "f", weight: fcWeight, outIn: false, bias: fcBias, a: fcA, b: fcB };
  const proj = { name: "p", weight: projWeight, outIn: false, bias: projBias, a: projA, b: projB };
  return mixtureMlp(
    tape,
    "moe_mlp",
    x,
    gate,
    { branches: [fc], activation: GELU, out: proj },
    d,
    scale,
    opts,
  );
}
