// The mixture of LoRA experts (kernels/mixture.ts has the math) dispatched densely: every expert
// runs on every token, an unselected one weighted by its gate 0. Each per-expert tensor is a
// stack of the experts' N rows, [E, N, ·], expert e's row n being token n's; so the kernels sum
// over the experts as they go: the forward kernel of kernels/mixture_kernels.ts computes each
// branch's p_kj (saved, [E, N, H] per branch; each consumer recomputes h_j on load,
// kernels/activation.ts) and the mix m = Σ_j g_j·h_j in one pass, the backward kernel sums
// Σ_j dp_kj as it writes dp_kj, and the stacked expands of kernels/lowrank.ts add Σ_j of their
// experts' terms into y and dx. kernels/mixture_record.ts records the rest, as for the sparse
// dispatch (kernels/mixture_sparse.ts).
import { mixForwardWgsl, mixTile } from "./mixture_kernels.ts";
import { type MixtureOp, RowKernels, type RowSpace } from "./mixture_row_space.ts";

/** Every expert's N rows of the mixture `op`, and its steps over them. */
export function denseSpace(op: MixtureOp): RowSpace {
  const { gate, d, scale } = op;
  const { rows, embd, experts } = d;
  const { branches, activation, out } = op.mlp;
  const kernels = new RowKernels(op, [experts, rows]);
  return {
    kernels,
    setup: [],
    gateRows: [rows, experts],
    preActivationsAndMix: ({ bases, us, pres, mix }) => [
      kernels.launch(
        `${branches.map((l) => `p_${l.name}`).join(", ")}, mix`,
        (index) => mixForwardWgsl(d, scale, activation, index),
        mixTile(d).invocations,
        [...branches.flatMap((l, k) => [bases[k], us[k], l.b]), gate, ...pres, mix],
      ),
    ],
    addOutDelta: (uo, y) => [
      kernels.expand(
        `y += ${out.bias ? `Σg·b_${out.name} + ` : ""}s·Σ g·u_${out.name}·B_${out.name}ᵀ`,
        {
          wide: embd,
          weight: "wide-major",
          scale,
          gated: true,
          bias: out.bias !== null,
          epilogue: "add",
        },
        [uo, out.b, y, gate, ...(out.bias ? [out.bias] : [])],
      ),
    ],
    sumBranch: null,
    addDxLowRank: (vs, dx) =>
      branches.map((l, k) =>
        kernels.expand(
          `dx += Σ v_${l.name}·A_${l.name}`,
          {
            wide: embd,
            weight: "rank-major",
            scale: 1,
            gated: false,
            bias: false,
            epilogue: "add",
          },
          [vs[k], l.a, dx],
        )
      ),
  };
}
