// A gated mixture of E LoRA experts over one frozen two-layer MLP whose weights all experts share:
// the work of kernels/moe_mlp.ts (GPT-2's GELU MLP) and kernels/moe_swiglu.ts (Llama's SwiGLU
// MLP). Row-vector convention, PEFT shapes, the experts' LoRA tensors stacked along a leading E.
// The first layer has one branch k (GPT-2: c_fc) or two (Llama: gate, up), the activation takes
// them all, the second layer o (c_proj, down) takes h:
//   p_kj = x·W_k (+ b_k) + s·(x·A_kjᵀ)·B_kjᵀ,   h_j = act(p_1j, ..),
//   y = Σ_j g_j·(h_j·W_o (+ b_o) + s·(h_j·A_ojᵀ)·B_ojᵀ)
// Fused by linearity, so that every frozen product runs once whatever E is:
//   base_k = x·W_k (+ b_k) (once per branch),   m = Σ_j g_j·h_j,
//   y = m·W_o (once) (+ (Σ_j g_j)·b_o) + s·Σ_j (g_j·u_oj)·B_ojᵀ,   u_kj = x·A_kjᵀ, u_oj = h_j·A_ojᵀ.
// Backward (each gradient only when asked for), with v_oj = dy·B_oj:
//   dm = dy·W_oᵀ (once),   dh_j = g_j·(dm + s·v_oj·A_oj),   dp_kj = dh_j ⊙ ∂h_j/∂p_kj,
//   v_kj = s·dp_kj·B_kj,   dx = Σ_k (Σ_j dp_kj)·W_kᵀ (once per branch) + Σ_k Σ_j v_kj·A_kj,
//   dgate_j = dm·h_j (+ dy·b_o) + s·u_oj·v_oj (row-wise dots: dy·y_j without forming y_j),
//   dA_kj = v_kjᵀ·x,  dB_kj = s·dp_kjᵀ·u_kj,  dA_oj = s·(g_j·v_oj)ᵀ·h_j,  dB_oj = s·dyᵀ·(g_j·u_oj).
// (W stands for the weight as applied: a frozen weight is stored [in, out], GPT-2's Conv1D, or
// [out, in], Hugging Face's Linear with y = x·Wᵀ; the matmul operand transposes it as needed.)
// Two dispatches compute it, recorded by one skeleton (kernels/mixture_record.ts) over the rows
// each gives (kernels/mixture_row_space.ts). Dense (kernels/mixture_dense.ts) runs every expert
// on every token, an unselected one weighted by its gate 0, saving p_kj for every expert
// ([E, N, H] per branch); sparse (kernels/mixture_sparse.ts) runs each token through the experts
// its top-k gate selects only, saving k·N rows: the same values, except that dgate_j of an
// expert the gate does not select is 0 (exact for the router: kernels/mixture_kernels.ts). The
// big products go through kernels/matmul.ts, the per-expert low-rank products through
// kernels/lowrank.ts, the elementwise work through the kernels of kernels/mixture_kernels.ts;
// each consumer of h_j recomputes it from p_kj on load (kernels/activation.ts).
import type { Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { denseSpace } from "./mixture_dense.ts";
import type { MixtureDims } from "./mixture_kernels.ts";
import {
  checkBindings,
  frozenProduct,
  type MixtureDispatch,
  type MixtureMlp,
  type MixtureOptions,
} from "./mixture_layers.ts";
import { recordMixture } from "./mixture_record.ts";
import { sparseSpace } from "./mixture_sparse.ts";
import { MAX_EXPERTS, selectedPerRow } from "./topk_gate.ts";
import { kernelVariant } from "./variant.ts";

export type {
  MixtureDispatch,
  MixtureLayer,
  MixtureMlp,
  MixtureOptions,
} from "./mixture_layers.ts";

/**
 * The sizes of an op's tensors, with one clear error for bad input. `layout` lists every tensor
 * as the messages show it, "x [N, C], gate [N, E], ...", in the letters N (rows), C (embd), E
 * (experts), r (rank) and `hidden` (the letter of H); each letter takes its size from the first
 * tensor that has it, and then every tensor must have its shape and be f32, the `frozen` ones
 * need no gradient, E is at most MAX_EXPERTS and the scale is finite. `op` names the function.
 */
export function checkMixture(
  op: string,
  layout: string,
  tensors: Record<string, Tensor>,
  frozen: readonly string[],
  scale: number,
  hidden: string,
): MixtureDims {
  const entries = [...layout.matchAll(/(\w+) \[([^\]]*)\]/g)].map(([_, name, letters]) => ({
    name,
    tensor: tensors[name],
    letters: letters.split(", "),
  }));
  const sizes: Record<string, number> = {};
  for (const { tensor, letters } of entries) {
    letters.forEach((letter, i) => sizes[letter] ??= tensor.shape[i]);
  }
  const wrong = entries.filter(({ tensor, letters }) =>
    tensor.dtype !== "f32" || tensor.shape.join() !== letters.map((l) => sizes[l]).join()
  );
  if (wrong.length > 0) {
    const all = entries.map(({ name, tensor }) => `${name} ${tensor}`).join(", ");
    throw new ShapeError(
      `${op}: shapes do not fit together (${all}); expected ${layout}, all f32; ` +
        `wrong: ${wrong.map(({ name }) => name).join(", ")}`,
    );
  }
  const { N: rows, C: embd, [hidden]: h, r: rank, E: experts } = sizes;
  if (experts > MAX_EXPERTS) {
    throw new ShapeError(
      `${op}: ${experts} experts (gate ${tensors.gate}); at most ${MAX_EXPERTS}`,
    );
  }
  const trainable = entries.filter(({ name, tensor }) =>
    frozen.includes(name) && tensor.requiresGrad
  );
  if (trainable.length > 0) {
    throw new ShapeError(
      `${op}: the base MLP weights must be frozen, but ` +
        `${trainable.map(({ name, tensor }) => `${name} ${tensor}`).join(", ")} require gradients`,
    );
  }
  if (!Number.isFinite(scale)) throw new ShapeError(`${op}: scale ${scale} is not finite`);
  return { rows, embd, hidden: h, rank, experts };
}

/**
 * y [N, C] of the mixture (header), recorded on `tape` as the op `name`; its differentiable
 * inputs, in order: x, gate, each branch's a and b, out's a and b. The caller has checked the
 * shapes against `d` and that the frozen weights need no gradient. Dense or sparse as
 * `opts.dispatch` asks (sparseDispatch).
 */
export function mixtureMlp(
  tape: Tape,
  name: string,
  x: Tensor, /*[N, C]*/
  gate: Tensor, /*[N, E]*/
  mlp: MixtureMlp,
  d: MixtureDims,
  scale: number,
  opts: MixtureOptions = {},
): Tensor {
  const engine = tape.engine;
  const variant = opts.variant ?? kernelVariant(engine);
  const maxBindingBytes = opts.maxBindingBytes ?? engine.limits.maxStorageBufferBindingSize;
  const matmul = frozenProduct(engine, name, variant, maxBindingBytes);
  const maxStorageBuffers = opts.maxStorageBuffers ?? engine.limits.maxStorageBuffersPerShaderStage;
  const op = { tape, name, x, gate, mlp, d, scale };
  const perRow = opts.dispatch
    ? sparseDispatch(name, gate, d, opts.dispatch)
    : sparseDispatch(name, gate, d, chosenDispatch.get(engine) ?? "auto", false);
  if (perRow !== null) {
    checkBindings(name, mlp, d, [perRow * d.rows], maxBindingBytes);
    return recordMixture(op, sparseSpace(op, perRow), matmul, maxStorageBuffers);
  }
  checkBindings(name, mlp, d, [d.experts, d.rows], maxBindingBytes);
  return recordMixture(op, denseSpace(op), matmul, maxStorageBuffers);
}

/**
 * The fewest rows `auto` dispatches sparsely: bench/comigs_sparse.ts --crossover measured sparse
 * at 0.76–1.35× dense over 8 rows (the route's sort and its extra dispatches cost as much as the
 * rows saved), about 1× over 32, 0.33–0.87× over 128 or more with E ≥ 4 (lavapipe, both families).
 */
export const SPARSE_MIN_ROWS = 32;

/** The dispatch engines' mixtures take when an op's options do not say. */
const chosenDispatch = new WeakMap<Engine, MixtureDispatch>();

/**
 * Makes the mixtures recorded on `engine` from now on dispatch as `dispatch` where their options
 * do not say (bench/comigs_sparse.ts times whole steps both ways): "sparse" then takes sparse
 * wherever the gate is a top-k gate (and dense elsewhere), "auto" is the default.
 */
export function chooseMixtureDispatch(engine: Engine, dispatch: MixtureDispatch): void {
  chosenDispatch.set(engine, dispatch);
}

/**
 * The k to dispatch sparsely with (each token's gate selects at most k experts), or null for
 * dense: `auto` takes sparse for a top-k gate with k < E over at least SPARSE_MIN_ROWS rows;
 * `sparse` takes it for any top-k gate, and refuses any other gate when `strict`.
 */
function sparseDispatch(
  name: string,
  gate: Tensor,
  d: MixtureDims,
  dispatch: MixtureDispatch,
  strict = true,
): number | null {
  if (dispatch === "dense") return null;
  const k = selectedPerRow(gate);
  if (dispatch === "sparse") {
    if (k === undefined && strict) {
      throw new ShapeError(
        `${name}: sparse dispatch needs a gate made by topkGate (at most k experts per token); ` +
          `${gate} is not one: give the router's top-k gate, or dispatch "dense"`,
      );
    }
    return k ?? null;
  }
  return k !== undefined && k < d.experts && d.rows >= SPARSE_MIN_ROWS ? k : null;
}
