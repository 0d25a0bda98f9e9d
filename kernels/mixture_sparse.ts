// The mixture of LoRA experts (kernels/mixture.ts has the math) dispatched sparsely: each token
// goes through the k experts its top-k gate selects and no other, so E experts cost what k do.
// The gate's nonzero entries are counting-sorted into slots, grouped by expert
// (kernels/expert_routes.ts, kernels/route_layout.ts); every per-expert tensor holds one row per
// slot ([S, ·], S = k·N, where the dense dispatch holds [E, N, ·]), and each expert's low-rank
// kernels walk its own slots (kernels/lowrank.ts with `routes`), reading x, base, dy, dm at the
// slot's token. Per-slot results come back to their tokens in a fixed order (each token's
// experts ascending) by `combine`; the frozen products still run once for all experts:
//   forward:  base_k = x·W_k (+ b_k),  u_k[s] = x[n]·A_keᵀ,  p_k[s] = base_k[n] + s·u_k[s]·B_keᵀ
//             (saved),  m[n] = Σ_i g_i·h(p[s_i]),  u_o[s] = h(p[s])·A_oeᵀ,
//             y = m·W_o + Σ_i z[s_i],  z[s] = g·(b_o + s·u_o[s]·B_oeᵀ)
//   backward: v_o[s] = dy[n]·B_oe,  dm = dy·W_oᵀ,  dh[s] = g·(dm[n] + s·v_o[s]·A_oe),
//             dp_k[s] from the activation's slopes, dx = Σ_k (Σ_i dp_k[s_i])·W_kᵀ +
//             Σ_i Σ_k v_k[s_i]·A_ke_i,  v_k[s] = s·dp_k[s]·B_ke; the LoRA gradients as dense,
//             summed over each expert's slots only; dgate as dense for selected experts, 0 for
//             the others (kernels/mixture_kernels.ts's dgateWgsl says why that is exact).
// (slot s serves token n with expert e and gate g = gate[n, e]; s_i is token n's i-th slot.)
// kernels/mixture_record.ts records the steps both dispatches share; here are the routing and
// the combines.
import type { Tensor } from "../engine/tensor.ts";
import { IDENTITY } from "./activation.ts";
import { combine, type CombineSpec, routeTokens } from "./expert_routes.ts";
import { type MixtureOp, RowKernels, type RowSpace } from "./mixture_row_space.ts";
import { RouteLayout } from "./route_layout.ts";

/**
 * The slots of the mixture `op` for a gate with at most `perRow` nonzero entries per row, and its
 * steps over them.
 */
export function sparseSpace(op: MixtureOp, perRow: number): RowSpace {
  const { tape, name, gate, d, scale } = op;
  const { rows, embd, hidden, experts } = d;
  const { branches, activation, out } = op.mlp;
  const routes = new RouteLayout(rows, experts, Math.min(perRow, experts));
  const { route, commands: routing } = routeTokens(tape, name, gate, routes);
  const kernels = new RowKernels(op, [routes.slots], routes, route);
  /** result [N, wide] (+)= each token's sum over its slots, in route order. */
  const combined = (label: string, spec: Omit<CombineSpec, "routes">, on: Tensor[]) =>
    combine(tape.engine, kernels.label(label), { routes, ...spec }, kernels.resources(on));
  return {
    kernels,
    setup: routing,
    gateRows: [routes.slots],
    preActivationsAndMix: ({ bases, us, pres, mix }) => [
      ...branches.map((l, k) =>
        kernels.expand(
          `p_${l.name} = base_${l.name} + s·u_${l.name}·B_${l.name}ᵀ`,
          {
            wide: hidden,
            weight: "wide-major",
            scale,
            gated: false,
            bias: false,
            epilogue: "base",
          },
          [us[k], l.b, pres[k], bases[k]],
        )
      ),
      combined(
        "mix = Σ g·h",
        { wide: hidden, activation, gated: true, accumulate: false },
        [...pres, mix, gate],
      ),
    ],
    addOutDelta: (uo, y) => {
      const outTerms = kernels.tensor(`z_${out.name}`, embd);
      return [
        kernels.expand(
          `z = g·(${out.bias ? `b_${out.name} + ` : ""}s·u_${out.name}·B_${out.name}ᵀ)`,
          {
            wide: embd,
            weight: "wide-major",
            scale,
            gated: true,
            bias: out.bias !== null,
            epilogue: "store",
          },
          [uo, out.b, outTerms, gate, ...(out.bias ? [out.bias] : [])],
        ),
        combined(
          "y += Σ z",
          { wide: embd, activation: IDENTITY, gated: false, accumulate: true },
          [outTerms, y],
        ),
      ];
    },
    sumBranch: (label, dp, sum) =>
      combined(
        label,
        { wide: hidden, activation: IDENTITY, gated: false, accumulate: false },
        [dp, sum],
      ),
    // Each slot's Σ_k v_k·A_k (its expert's), then added to its token's dx.
    addDxLowRank: (vs, dx) => {
      const dxTerms = kernels.tensor(`dx terms`, embd);
      return [
        ...branches.map((l, k) =>
          kernels.expand(
            `dx terms ${k === 0 ? "=" : "+="} v_${l.name}·A_${l.name}`,
            {
              wide: embd,
              weight: "rank-major",
              scale: 1,
              gated: false,
              bias: false,
              epilogue: k === 0 ? "store" : "add",
            },
            [vs[k], l.a, dxTerms],
          )
        ),
        combined(
          "dx += Σ dx terms",
          { wide: embd, activation: IDENTITY, gated: false, accumulate: true },
          [dxTerms, dx],
        ),
      ];
    },
  };
}
