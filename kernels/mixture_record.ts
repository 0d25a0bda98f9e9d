// The mixture of LoRA experts (kernels/mixture.ts has the math) recorded on a tape, once for
// both dispatches: the frozen products (once whatever E is), the low-rank products of the
// branches and of the out layer, the backward's fused elementwise kernel (split to the storage
// buffer limit) and the gate's gradient, each gradient only when asked for. Where the experts'
// rows live, and the steps that sum over a token's experts, come from a RowSpace
// (kernels/mixture_row_space.ts): every expert's N rows (kernels/mixture_dense.ts) or the
// routed slots (kernels/mixture_sparse.ts).
import type { Command } from "../engine/device.ts";
import type { Tensor } from "../engine/tensor.ts";
import { IDENTITY } from "./activation.ts";
import {
  dgateWgsl,
  type MixBackwardOutputs,
  mixBackwardPasses,
  mixBackwardWgsl,
  mixTile,
  passBranches,
} from "./mixture_kernels.ts";
import { frozenOperand, type FrozenProduct, rowsOf } from "./mixture_layers.ts";
import type { MixtureOp, RowSpace } from "./mixture_row_space.ts";
import { range } from "./tile_codegen.ts";

/**
 * y [N, C] of the mixture `op` over the rows of `space`, recorded on its tape; its
 * differentiable inputs, in order: x, gate, each branch's a and b, out's a and b. `matmul` runs
 * the frozen products; the backward kernel is split into passes to bind at most
 * `maxStorageBuffers`.
 */
export function recordMixture(
  op: MixtureOp,
  space: RowSpace,
  matmul: FrozenProduct,
  maxStorageBuffers: number,
): Tensor {
  const { tape, name, x, gate, mlp, d, scale } = op;
  const { rows, embd, hidden, rank, experts } = d;
  const { branches, activation, out } = mlp;
  const kernels = space.kernels;
  const overwrite = (tensor: Tensor) => ({ tensor, accumulate: false });
  const K = range(branches.length);
  const bases = branches.map((l) =>
    tape.tensor([rows, hidden], `${name} base_${l.name}(${x.label})`)
  );
  const us = branches.map((l) => kernels.tensor(`u_${l.name}`, rank));
  const pres = branches.map((l) => kernels.tensor(`p_${l.name}`, hidden));
  const mix = tape.tensor([rows, hidden], `${name} mix(${x.label})`);
  const uo = kernels.tensor(`u_${out.name}`, rank);
  const y = tape.tensor([rows, embd], `${name}(${x.label})`);
  const forward = [
    ...space.setup,
    ...branches.flatMap((l, k) => [
      ...matmul(
        `base_${l.name} = x·W_${l.name}${l.bias ? ` + b_${l.name}` : ""}`,
        rowsOf(x, rows, embd),
        frozenOperand(l, false),
        overwrite(bases[k]),
        l.bias,
      ),
      kernels.contract(
        `u_${l.name} = x·A_${l.name}ᵀ`,
        { k: embd, actPerExpert: false, activation: IDENTITY, weight: "rank-major", scale: 1 },
        [x, l.a, us[k]],
      ),
    ]),
    ...space.preActivationsAndMix({ bases, us, pres, mix }),
    kernels.contract(
      `u_${out.name} = h·A_${out.name}ᵀ`,
      { k: hidden, actPerExpert: true, activation, weight: "rank-major", scale: 1 },
      [...pres, out.a, uo],
    ),
    ...matmul(
      `y = mix·W_${out.name}`,
      rowsOf(mix, rows, hidden),
      frozenOperand(out, false),
      overwrite(y),
    ),
    ...space.addOutDelta(uo, y),
  ];

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
        commands.push(
          ...kernels.outer(`dB_${out.name}`, "wide-major", spec, [[dy], uo], scale, doB),
        );
      }
      const needBranch = dBranch.map(({ da, db }) => !!(dx || da || db));
      const anyBranch = needBranch.some(Boolean);
      if (!anyBranch && !dgate && !doA) return commands;
      const vo = kernels.tensor(`v_${out.name}`, rank);
      commands.push(kernels.contract(
        `v_${out.name} = dy·B_${out.name}`,
        { k: embd, actPerExpert: false, activation: IDENTITY, weight: "k-major", scale: 1 },
        [dy, out.b, vo],
      ));
      if (doA) {
        const spec = { wide: hidden, bigPerExpert: true, activation, gated: true };
        commands.push(
          ...kernels.outer(`dA_${out.name}`, "rank-major", spec, [pres, vo], scale, doA),
        );
      }
      if (!anyBranch && !dgate) return commands;
      const dm = tape.tensor([rows, hidden], `${name} dm(${x.label})`);
      commands.push(...matmul(
        `dm = dy·W_${out.name}ᵀ`,
        rowsOf(dy, rows, embd),
        frozenOperand(out, true),
        overwrite(dm),
      ));
      const dps = branches.map((l, k) =>
        needBranch[k] ? kernels.tensor(`dp_${l.name}`, hidden) : null
      );
      // Σ_j dp_kj of each branch, for dx's frozen products.
      const sums = dx
        ? branches.map((l) => tape.tensor([rows, hidden], `${name} Σ dp_${l.name}(${x.label})`))
        : [];
      const sumsInKernel = !!dx && space.sumBranch === null;
      const tiles = mixTile(d, kernels.routes);
      const partial = dgate
        ? tape.tensor([tiles.colTiles, ...space.gateRows], `${name} dgate partials`)
        : null;
      const source = (outputs: MixBackwardOutputs) => (index: string) =>
        mixBackwardWgsl(d, scale, activation, outputs, index, kernels.routes);
      const outputs = { grads: needBranch, sums: sumsInKernel, dgate: !!dgate };
      for (const pass of mixBackwardPasses(outputs, (o) => source(o)("0u"), maxStorageBuffers)) {
        commands.push(kernels.launch(
          passBranches(pass, branches).map((l) => `dp_${l.name}`).join(", "),
          source(pass),
          tiles.invocations,
          [
            dm,
            ...pres,
            vo,
            out.a,
            gate,
            ...passBranches(pass, dps),
            ...(pass.sums ? passBranches(pass, sums) : []),
            ...(pass.dgate && partial ? [partial] : []),
          ],
        ));
      }
      if (dgate && partial) {
        commands.push(kernels.launch(
          "dgate",
          (index) =>
            dgateWgsl(d, scale, out.bias !== null, dgate.accumulate, index, kernels.routes),
          rows * experts,
          [partial, dy, ...(out.bias ? [out.bias] : []), uo, vo, dgate.tensor],
        ));
      }
      const vs: Tensor[] = [];
      for (const [k, l] of branches.entries()) {
        const dp = dps[k];
        if (!dp) continue;
        const { da, db } = dBranch[k];
        if (db) {
          const spec = { wide: hidden, bigPerExpert: true, activation: IDENTITY, gated: false };
          commands.push(
            ...kernels.outer(`dB_${l.name}`, "wide-major", spec, [[dp], us[k]], scale, db),
          );
        }
        if (!dx && !da) continue;
        vs[k] = kernels.tensor(`v_${l.name}`, rank);
        commands.push(kernels.contract(
          `v_${l.name} = s·dp_${l.name}·B_${l.name}`,
          { k: hidden, actPerExpert: true, activation: IDENTITY, weight: "k-major", scale },
          [dp, l.b, vs[k]],
        ));
        if (da) {
          const spec = { wide: embd, bigPerExpert: false, activation: IDENTITY, gated: false };
          commands.push(...kernels.outer(`dA_${l.name}`, "rank-major", spec, [[x], vs[k]], 1, da));
        }
      }
      if (!dx) return commands;
      // dx = the first branch's product (overwrite or accumulate as asked), then adds.
      const dxAdd = { tensor: dx.tensor, accumulate: true };
      for (const [k, l] of branches.entries()) {
        if (space.sumBranch) commands.push(space.sumBranch(`Σ dp_${l.name}`, dps[k]!, sums[k]));
        commands.push(...matmul(
          `dx ${k === 0 && !dx.accumulate ? "=" : "+="} Σdp_${l.name}·W_${l.name}ᵀ`,
          rowsOf(sums[k], rows, hidden),
          frozenOperand(l, true),
          k === 0 ? dx : dxAdd,
        ));
      }
      commands.push(...space.addDxLowRank(vs, dx.tensor));
      return commands;
    },
  });
  return y;
}
