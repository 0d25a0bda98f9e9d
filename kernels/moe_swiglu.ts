// The MLP of a CoMiGS block on a Llama-family base: a gated mixture of E LoRA experts sharing one
// frozen SwiGLU MLP (Hugging Face layout, y = x·Wᵀ, no biases; PEFT shapes, the experts' LoRA
// tensors stacked along a leading E):
//   g_j = x·W_gᵀ + s·(x·A_gjᵀ)·B_gjᵀ,   u_j = x·W_uᵀ + s·(x·A_ujᵀ)·B_ujᵀ,   h_j = silu(g_j) ⊙ u_j,
//   y = Σ_j w_j·(h_j·W_dᵀ + s·(h_j·A_djᵀ)·B_djᵀ)
// Fused by linearity, so the three big frozen products run once whatever E is:
//   x·W_gᵀ, x·W_uᵀ (once each),   m = Σ_j w_j·h_j,   y = m·W_dᵀ (once) + s·Σ_j (w_j·u_dj)·B_djᵀ,
// with u_dj = h_j·A_djᵀ; per expert only the rank-r deltas and the SwiGLU elementwise work.
// Backward (each gradient only when asked for), with v_dj = dy·B_dj:
//   dm = dy·W_d (once),   dh_j = w_j·(dm + s·v_dj·A_dj),
//   dg_j = dh_j ⊙ u_j ⊙ silu'(g_j),   du_j = dh_j ⊙ silu(g_j),
//   dx = (Σ_j dg_j)·W_g + (Σ_j du_j)·W_u (once each) + s·Σ_j (dg_j·B_gj)·A_gj + (du_j·B_uj)·A_uj,
//   dgate_j = dm·h_j + s·u_dj·v_dj (row-wise dots: dy·y_j without forming y_j), and the LoRA
//   tensors' gradients as for any LoRA layer (dA_dj, dB_dj gated by w_j).
// It is the two-branch case of the mixture in kernels/mixture.ts (GPT-2's GELU MLP,
// kernels/moe_mlp.ts, is the one-branch one): forward saves g_j and u_j for every expert
// ([E, N, I] each; for the routed tokens only, [k·N, I], when dispatched sparsely) and every
// consumer recomputes h_j = silu(g_j) ⊙ u_j on load.
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { SWIGLU } from "./activation.ts";
import { checkMixture, mixtureMlp, type MixtureOptions } from "./mixture.ts";

export interface MoeSwigluWeights {
  gateWeight: Tensor; // [I, C] frozen (mlp.gate_proj.weight)
  upWeight: Tensor; // [I, C] frozen (mlp.up_proj.weight)
  downWeight: Tensor; // [C, I] frozen (mlp.down_proj.weight)
  gateA: Tensor; // [E, r, C] the experts' gate_proj lora_A, stacked
  gateB: Tensor; // [E, I, r] gate_proj lora_B
  upA: Tensor; // [E, r, C] up_proj lora_A
  upB: Tensor; // [E, I, r] up_proj lora_B
  downA: Tensor; // [E, r, I] down_proj lora_A
  downB: Tensor; // [E, C, r] down_proj lora_B
}

/** Every tensor's shape, in the letters of kernels/mixture.ts's checkMixture (I for H). */
const LAYOUT = "x [N, C], gate [N, E], gateWeight [I, C], upWeight [I, C], downWeight [C, I], " +
  "gateA [E, r, C], gateB [E, I, r], upA [E, r, C], upB [E, I, r], downA [E, r, I], downB [E, C, r]";
const FROZEN = ["gateWeight", "upWeight", "downWeight"];

/**
 * y [N, C] = Σ_j gate[n, j]·(h_j·W_dᵀ + s·(h_j·A_djᵀ)·B_djᵀ), h_j = silu(g_j) ⊙ u_j, with
 * g_j = x·W_gᵀ + s·(x·A_gjᵀ)·B_gjᵀ and u_j = x·W_uᵀ + s·(x·A_ujᵀ)·B_ujᵀ. E = 1 with a gate of
 * ones is the single LoRA'd SwiGLU MLP.
 */
export function moeSwiglu(
  tape: Tape,
  x: Tensor, /*[N, C]*/
  gate: Tensor, /*[N, E]*/
  weights: MoeSwigluWeights,
  scale: number,
  opts: MixtureOptions = {},
): Tensor {
  const d = checkMixture("moeSwiglu", LAYOUT, { x, gate, ...weights }, FROZEN, scale, "I");
  const w = weights;
  // Hugging Face's Linear weights are stored [out, in]; Llama's MLP has no biases.
  const layer = (name: string, weight: Tensor, a: Tensor, b: Tensor) => ({
    name,
    weight,
    outIn: true,
    bias: null,
    a,
    b,
  });
  const mlp = {
    branches: [
      layer("gate", w.gateWeight, w.gateA, w.gateB),
      layer("up", w.upWeight, w.upA, w.upB),
    ],
    activation: SWIGLU,
    out: layer("down", w.downWeight, w.downA, w.downB),
  };
  return mixtureMlp(tape, "moe_swiglu", x, gate, mlp, d, scale, opts);
}
