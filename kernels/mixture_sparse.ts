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
import type { Command } from "../engine/device.ts";
import type { GradTarget, Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { IDENTITY } from "./activation.ts";
import { combine, type CombineSpec, routeTokens } from "./expert_routes.ts";
import {
  contract,
  type ContractSpec,
  expand,
  type ExpandSpec,
  outer,
  type OuterSpec,
} from "./lowrank.ts";
import {
  dgateWgsl,
  type MixBackwardOutputs,
  mixBackwardPasses,
  mixBackwardWgsl,
  mixTile,
  type MixtureDims,
  passBranches,
} from "./mixture_kernels.ts";
import { frozenOperand, type FrozenProduct, type MixtureMlp, rowsOf } from "./mixture_layers.ts";
import { RouteLayout } from "./route_layout.ts";
import { launch, range } from "./tile_codegen.ts";

/**
 * y [N, C] of the mixture for a gate with at most `perRow` nonzero entries per row, recorded on
 * `tape` as the op `name` (inputs as kernels/mixture.ts's mixtureMlp); `matmul` runs the frozen
 * products; the backward kernel is split into passes to bind at most `maxStorageBuffers`.
 */
export function sparseMixture(
  tape: Tape,
  name: string,
  x: Tensor, /*[N, C]*/
  gate: Tensor, /*[N, E]*/
  mlp: MixtureMlp,
  d: MixtureDims,
  scale: number,
  perRow: number,
  matmul: FrozenProduct,
  maxStorageBuffers: number,
): Tensor {
  const engine = tape.engine;
  const { rows, embd, hidden, rank, experts } = d;
  const { branches, activation, out } = mlp;
  const routes = new RouteLayout(rows, experts, Math.min(perRow, experts));
  const { route, commands: routing } = routeTokens(tape, name, gate, routes);
  const overwrite = (tensor: Tensor) => ({ tensor, accumulate: false });
  const K = range(branches.length);
  const perSlot = (what: string, width: number) =>
    tape.tensor([routes.slots, width], `${name} ${what}(${x.label})`);
  const bases = branches.map((l) =>
    tape.tensor([rows, hidden], `${name} base_${l.name}(${x.label})`)
  );
  const us = branches.map((l) => perSlot(`u_${l.name}`, rank));
  const pres = branches.map((l) => perSlot(`p_${l.name}`, hidden));
  const mix = tape.tensor([rows, hidden], `${name} mix(${x.label})`);
  const uo = perSlot(`u_${out.name}`, rank);
  const outTerms = perSlot(`z_${out.name}`, embd);
  const y = tape.tensor([rows, embd], `${name}(${x.label})`);
  // Every low-rank kernel walks each expert's slots; the route is the last resource of each.
  const routed = { rows, rank, experts, stacked: true, routes };
  const contractR = (label: string, spec: Omit<ContractSpec, keyof typeof routed>, on: Tensor[]) =>
    contract(engine, `${name} ${label}`, { ...routed, ...spec }, [...on, route]);
  const expandR = (label: string, spec: Omit<ExpandSpec, keyof typeof routed>, on: Tensor[]) =>
    expand(engine, `${name} ${label}`, { ...routed, ...spec }, [...on, route]);
  const combineR = (label: string, spec: Omit<CombineSpec, "routes">, on: Tensor[]) =>
    combine(engine, `${name} ${label}`, { routes, ...spec }, [...on, route]);
  const forward = [
    ...routing,
    ...branches.flatMap((l, k) => [
      ...matmul(
        `base_${l.name} = x·W_${l.name}${l.bias ? ` + b_${l.name}` : ""}`,
        rowsOf(x, rows, embd),
        frozenOperand(l, false),
        overwrite(bases[k]),
        l.bias,
      ),
      contractR(
        `u_${l.name} = x·A_${l.name}ᵀ (routed)`,
        { k: embd, actPerExpert: false, activation: IDENTITY, weight: "rank-major", scale: 1 },
        [x, l.a, us[k]],
      ),
      expandR(
        `p_${l.name} = base_${l.name} + s·u_${l.name}·B_${l.name}ᵀ (routed)`,
        { wide: hidden, weight: "wide-major", scale, gated: false, bias: false, epilogue: "base" },
        [us[k], l.b, pres[k], bases[k]],
      ),
    ]),
    combineR(
      "mix = Σ g·h (routed)",
      { wide: hidden, activation, gated: true, accumulate: false },
      [...pres, mix, gate],
    ),
    contractR(
      `u_${out.name} = h·A_${out.name}ᵀ (routed)`,
      { k: hidden, actPerExpert: true, activation, weight: "rank-major", scale: 1 },
      [...pres, out.a, uo],
    ),
    ...matmul(
      `y = mix·W_${out.name}`,
      rowsOf(mix, rows, hidden),
      frozenOperand(out, false),
      overwrite(y),
    ),
    expandR(
      `z = g·(${out.bias ? `b_${out.name} + ` : ""}s·u_${out.name}·B_${out.name}ᵀ) (routed)`,
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
    combineR(
      "y += Σ z (routed)",
      { wide: embd, activation: IDENTITY, gated: false, accumulate: true },
      [outTerms, y],
    ),
  ];

  /** target (+)= sumScale·Σ over expert e's slots of big[s]ᵀ ⊗ (g·)small[s], for each e. */
  const outerR = (
    label: string,
    layout: OuterSpec["layout"],
    spec: Omit<OuterSpec, keyof typeof routed | "layout">,
    [big, small]: [Tensor[], Tensor],
    sumScale: number,
    target: GradTarget,
  ): Command[] =>
    outer(
      tape,
      `${name} ${label} (routed)`,
      { ...routed, ...spec, layout },
      { big, small, gate, route },
      sumScale,
      target,
    );

  tape.record({
    name,
    inputs: [x, gate, ...branches.flatMap((l) => [l.a, l.b]), out.a, out.b],
    outputs: [y],
    forward,
    backward: (ctx) => {
      const dy = ctx.gradOutput(0);
      const [dx, dgate] = [ctx.gradInput(0), ctx.gradInput(1)];
      const dBranch = K.map((k) => ({
        da: ctx.gradInput(2 + 2 * k),
        db: ctx.gradInput(3 + 2 * k),
      }));
      const [doA, doB] = [ctx.gradInput(2 + 2 * K.length), ctx.gradInput(3 + 2 * K.length)];
      const commands: Command[] = [];
      if (doB) {
        const spec = { wide: embd, bigPerExpert: false, activation: IDENTITY, gated: true };
        commands.push(...outerR(`dB_${out.name}`, "wide-major", spec, [[dy], uo], scale, doB));
      }
      const needBranch = dBranch.map(({ da, db }) => !!(dx || da || db));
      const anyBranch = needBranch.some(Boolean);
      if (!anyBranch && !dgate && !doA) return commands;
      const vo = perSlot(`v_${out.name}`, rank);
      commands.push(contractR(
        `v_${out.name} = dy·B_${out.name} (routed)`,
        { k: embd, actPerExpert: false, activation: IDENTITY, weight: "k-major", scale: 1 },
        [dy, out.b, vo],
      ));
      if (doA) {
        const spec = { wide: hidden, bigPerExpert: true, activation, gated: true };
        commands.push(...outerR(`dA_${out.name}`, "rank-major", spec, [pres, vo], scale, doA));
      }
      if (!anyBranch && !dgate) return commands;
      const dm = tape.tensor([rows, hidden], `${name} dm(${x.label})`);
      commands.push(...matmul(
        `dm = dy·W_${out.name}ᵀ`,
        rowsOf(dy, rows, embd),
        frozenOperand(out, true),
        overwrite(dm),
      ));
      const dps = branches.map((l, k) => needBranch[k] ? perSlot(`dp_${l.name}`, hidden) : null);
      const tiles = mixTile(d, routes);
      const partial = dgate
        ? tape.tensor([tiles.colTiles, routes.slots], `${name} dgate partials`)
        : null;
      const source = (outputs: MixBackwardOutputs) => (index: string) =>
        mixBackwardWgsl(d, scale, activation, outputs, index, routes);
      const outputs = { grads: needBranch, sums: false, dgate: !!dgate };
      for (const pass of mixBackwardPasses(outputs, (o) => source(o)("0u"), maxStorageBuffers)) {
        commands.push(launch(
          engine,
          `${name} ${passBranches(pass, branches).map((l) => `dp_${l.name}`).join(", ")} (routed)`,
          source(pass),
          tiles.invocations,
          [
            dm,
            ...pres,
            vo,
            out.a,
            gate,
            ...passBranches(pass, dps),
            ...(pass.dgate && partial ? [partial] : []),
            route,
          ],
        ));
      }
      if (dgate && partial) {
        commands.push(launch(
          engine,
          `${name} dgate (routed)`,
          (index) => dgateWgsl(d, scale, out.bias !== null, dgate.accumulate, index, routes),
          rows * experts,
          [partial, dy, ...(out.bias ? [out.bias] : []), uo, vo, dgate.tensor, route],
        ));
      }
      const vs: Tensor[] = [];
      for (const [k, l] of branches.entries()) {
        const dp = dps[k];
        if (!dp) continue;
        const { da, db } = dBranch[k];
        if (db) {
          const spec = { wide: hidden, bigPerExpert: true, activation: IDENTITY, gated: false };
          commands.push(...outerR(`dB_${l.name}`, "wide-major", spec, [[dp], us[k]], scale, db));
        }
        if (!dx && !da) continue;
        vs[k] = perSlot(`v_${l.name}`, rank);
        commands.push(contractR(
          `v_${l.name} = s·dp_${l.name}·B_${l.name} (routed)`,
          { k: hidden, actPerExpert: true, activation: IDENTITY, weight: "k-major", scale },
          [dp, l.b, vs[k]],
        ));
        if (da) {
          const spec = { wide: embd, bigPerExpert: false, activation: IDENTITY, gated: false };
          commands.push(...outerR(`dA_${l.name}`, "rank-major", spec, [[x], vs[k]], 1, da));
        }
      }
      if (!dx) return commands;
      // dx = the first branch's product (overwrite or accumulate as asked), then adds.
      const dxAdd = { tensor: dx.tensor, accumulate: true };
      for (const [k, l] of branches.entries()) {
        const sum = tape.tensor([rows, hidden], `${name} Σ dp_${l.name}(${x.label})`);
        commands.push(
          combineR(
            `Σ dp_${l.name} (routed)`,
            { wide: hidden, activation: IDENTITY, gated: false, accumulate: false },
            [dps[k]!, sum],
          ),
          ...matmul(
            `dx ${k === 0 && !dx.accumulate ? "=" : "+="} Σdp_${l.name}·W_${l.name}ᵀ`,
            rowsOf(sum, rows, hidden),
            frozenOperand(l, true),
            k === 0 ? dx : dxAdd,
          ),
        );
      }
      // Each slot's Σ_k v_k·A_k (its expert's), then added to its token's dx.
      const dxTerms = perSlot(`dx terms`, embd);
      for (const [k, l] of branches.entries()) {
        commands.push(expandR(
          `dx terms ${k === 0 ? "=" : "+="} v_${l.name}·A_${l.name} (routed)`,
          {
            wide: embd,
            weight: "rank-major",
            scale: 1,
            gated: false,
            bias: false,
            epilogue: k === 0 ? "store" : "add",
          },
          [vs[k], l.a, dxTerms],
        ));
      }
      commands.push(combineR(
        "dx += Σ dx terms (routed)",
        { wide: embd, activation: IDENTITY, gated: false, accumulate: true },
        [dxTerms, dx.tensor],
      ));
      return commands;
    },
  });
  return y;
}
