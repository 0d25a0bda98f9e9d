// The WGSL of the mixture's own kernels (kernels/mixture.ts has the math and the op): the
// forward elementwise kernel (each branch's p_kj = base_k + s·u_kj·B_kjᵀ, saved, and the gated
// mixture m = Σ_j g_j·h_j), the backward one (dh_j, each branch's dp_kj, their sums over experts,
// the row dots dm·h_j per column tile) and the gate's gradient from those partials. Each is
// generated for its sizes and activation from the fragments of kernels/tile_codegen.ts. The
// backward and gate kernels also serve the sparse dispatch (kernels/mixture_sparse.ts): given
// `routes`, expert e's rows are the slots of its tokens (kernels/route_layout.ts).
import { bindingKinds, storageBufferCount } from "../engine/bindings.ts";
import { activationInputs, type MixtureActivation } from "./activation.ts";
import { floatLiteral } from "./literals.ts";
import type { RouteLayout } from "./route_layout.ts";
import {
  expandLoop,
  ExpertRows,
  GATE,
  gateLoads,
  type KernelSource,
  Matrix,
  range,
  RowTile,
  TILE_GROUPS,
  TILE_ROWS,
  WORKGROUP,
  zeroRegisters,
} from "./tile_codegen.ts";

/** The sizes: N rows, C = embd (in and out), H = hidden (between the layers), rank r, E experts. */
export interface MixtureDims {
  rows: number;
  embd: number;
  hidden: number;
  rank: number;
  experts: number;
}

/**
 * Forward, per tile of [N, H]: for each expert, p_k = base_k + s·u_kj·B_kjᵀ for every branch
 * (saved), and the mixture m = Σ_j g_j·act(p_1, ..).
 */
export function mixForwardWgsl(
  d: MixtureDims,
  scale: number,
  activation: MixtureActivation,
  index: string,
): KernelSource {
  const { rows, hidden, rank, experts } = d;
  const K = range(activation.inputs);
  const bases = K.map((k) => new Matrix(`base${k}`, hidden, "read"));
  const smalls = K.map((k) => new Matrix(`u${k}`, rank, "read"));
  const weights = K.map((k) => new Matrix(`b${k}`, rank, "read"));
  const saved = activationInputs(activation, "pre", hidden, "rw");
  const mix = new Matrix("mix", hidden, "rw");
  const tile = new RowTile(rows, hidden);
  // Each branch's p_k of expert e (saved for backward), then the expert's share g_j·h_j.
  const perElement = (t: number, g: number) =>
    [
      ...K.flatMap((k) => [
        `let p${k}${t}${g} = base${k}${t}${g} + ${floatLiteral(scale)} * acc${k}${t}${g};`,
        tile.guard(
          t,
          g,
          saved[k].store(tile.space.own(`row0 + ${t}u`, true), `c0 + ${g}u`, `p${k}${t}${g}`),
        ),
      ]),
      `mix${t}${g} += g${t} * ${activation.value(K.map((k) => `p${k}${t}${g}`))};`,
    ].join("\n    ");
  // acc_k_t_g[c] = u_ke[row0 + t, :] · B_ke[4·(c0 + g) + c, :]
  const expansions = K.map((k) =>
    `${zeroRegisters(`acc${k}`, TILE_ROWS, TILE_GROUPS, "    ")}
    ${
      expandLoop(tile, smalls[k], weights[k], "wide-major", {
        stacked: true,
        gated: false,
        acc: `acc${k}`,
      }, "    ")
    }`
  );
  const code = `${activation.prelude}
${[...bases, ...smalls, ...weights, ...saved, mix].map((m) => m.functions()).join("\n")}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  ${tile.start()}
  ${K.map((k) => tile.load(`base${k}`, bases[k])).join("\n  ")}
  ${zeroRegisters("mix", TILE_ROWS, TILE_GROUPS, "  ")}
  for (var e = 0u; e < ${experts}u; e++) {
    ${expansions.join("\n    ")}
    ${gateLoads(tile, experts)}
    ${tile.each(perElement, "    ")}
  }
  ${tile.guardEach((t, g) => mix.store(`row0 + ${t}u`, `c0 + ${g}u`, `mix${t}${g}`))}
}`;
  const bindings = [
    ...K.flatMap((k) => [bases[k].binding, smalls[k].binding, weights[k].binding]),
    GATE,
    ...saved.map((m) => m.binding),
    mix.binding,
  ];
  return { bindings, code };
}

/** Which outputs the backward elementwise kernel writes. */
export interface MixBackwardOutputs {
  /** Per branch k: dp_kj for every expert [E, N, H] (routed: every slot [S, H]). */
  grads: readonly boolean[];
  /** Σ_j dp_kj [N, H] of every branch in `grads` (for dx's big products; dense only). */
  sums: boolean;
  /**
   * Per column tile, Σ over its columns of dm·h_j [colTiles, N, E] (routed: [colTiles, S]),
   * for dgate.
   */
  dgate: boolean;
}

/** The tile of the backward kernels: [N, H] looping over the experts, or routed slots. */
export function mixTile(d: MixtureDims, routes?: RouteLayout): RowTile {
  return new RowTile(d.rows, d.hidden, routes ? ExpertRows.routed(routes) : undefined);
}

/**
 * Backward, per tile of [N, H] (each expert in turn) or, with `routes`, of one expert's slots:
 * dh_j = g_j·(dm + s·v_oj·A_oj), each branch's dp_kj from the activation's slopes, their sums
 * over experts (dense), and the tile's share of the row dots dm·h_j.
 */
export function mixBackwardWgsl(
  d: MixtureDims,
  scale: number,
  activation: MixtureActivation,
  out: MixBackwardOutputs,
  index: string,
  routes?: RouteLayout,
): KernelSource {
  const { rows, hidden, rank, experts } = d;
  if (routes && out.sums) throw new Error("mixBackwardWgsl: routed, the sums are combined apart");
  const K = range(activation.inputs);
  const wanted = K.filter((k) => out.grads[k]);
  const dm = new Matrix("dm", hidden, "read");
  const saved = activationInputs(activation, "pre", hidden);
  const vo = new Matrix("vo", rank, "read");
  const ao = new Matrix("ao", hidden, "read");
  const dp = K.map((k) => new Matrix(`dp${k}`, hidden, "rw"));
  const sums = K.map((k) => new Matrix(`dp_sum${k}`, hidden, "rw"));
  const written = [...wanted.map((k) => dp[k]), ...(out.sums ? wanted.map((k) => sums[k]) : [])];
  const tile = mixTile(d, routes);
  const T = range(TILE_ROWS);
  // A clamped (duplicate) column group must not count twice in the row dots.
  const dotTerm = (t: number, g: number, h: string) =>
    tile.ragged && g > 0
      ? `select(0.0, dot(dm${t}${g}, ${h}), c0 + ${g}u < ${tile.groups}u)`
      : `dot(dm${t}${g}, ${h})`;
  const perElement = (t: number, g: number) => {
    const id = `${t}${g}`;
    const act = activation.backward(K.map((k) => `x${k}${id}`), `dh${id}`, id);
    return [
      ...K.map((k) =>
        `let x${k}${id} = ${saved[k].load(tile.space.own(tile.row(t), true), tile.group(g))};`
      ),
      act.setup,
      `let dh${id} = g${t} * (dm${id} + ${floatLiteral(scale)} * acc${id});`,
      ...wanted.flatMap((k) => [
        `let dp${k}${id} = ${act.grads[k]};`,
        tile.guard(
          t,
          g,
          dp[k].store(tile.space.own(`row0 + ${t}u`, true), `c0 + ${g}u`, `dp${k}${id}`),
        ),
      ]),
      ...(out.sums ? wanted.map((k) => `dsum${k}${id} += dp${k}${id};`) : []),
      out.dgate ? `dg${t} += ${dotTerm(t, g, act.h)};` : "",
    ].filter(Boolean).join("\n    ");
  };
  // Expert e's tile: dh, dp and the row dots of its rows (dense: the experts in turn).
  const expert = `// acc_t_g[c] = v_oe[row0 + t, :] · A_oe[:, 4·(c0 + g) + c]
    ${zeroRegisters("acc", TILE_ROWS, TILE_GROUPS, "    ")}
    ${expandLoop(tile, vo, ao, "rank-major", { stacked: true, gated: false }, "    ")}
    ${gateLoads(tile, experts)}
    ${out.dgate ? T.map((t) => `var dg${t} = 0.0;`).join(" ") : ""}
    ${tile.each(perElement, "    ")}
    ${
    out.dgate
      ? T.map((t) =>
        `if (row0 + ${t}u < ${tile.space.count}) { dgate_partial[${
          routes
            ? `colTile * ${routes.slots}u + seg + row0 + ${t}u`
            : `(colTile * ${rows}u + row0 + ${t}u) * ${experts}u + e`
        }] = dg${t}; }`
      ).join("\n    ")
      : ""
  }`;
  const code = `${activation.prelude}
${[dm, ...saved, vo, ao, ...written].map((m) => m.functions()).join("\n")}
${tile.space.functions()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  ${tile.start()}
  ${tile.load("dm", dm)}
  ${
    out.sums
      ? wanted.map((k) => zeroRegisters(`dsum${k}`, TILE_ROWS, TILE_GROUPS, "  ")).join("\n  ")
      : ""
  }
  ${routes ? expert : `for (var e = 0u; e < ${experts}u; e++) {\n    ${expert}\n  }`}
  ${
    out.sums
      ? wanted.map((k) =>
        tile.guardEach((t, g) => sums[k].store(`row0 + ${t}u`, `c0 + ${g}u`, `dsum${k}${t}${g}`))
      ).join("\n  ")
      : ""
  }
}`;
  const bindings = [
    ...[dm, ...saved, vo, ao].map((m) => m.binding),
    GATE,
    ...written.map((m) => m.binding),
    ...(out.dgate ? [["dgate_partial", "rw", "array<f32>"] as const] : []),
    ...tile.space.bindings,
  ];
  return { bindings, code };
}

/**
 * The backward kernel's passes: one (all of `out`) when `source` binds at most
 * `maxStorageBuffers` storage buffers, else one per branch whose dp_kj is wanted (the dgate
 * partials with the first). Each pass recomputes dh_j and writes its values by the same
 * expressions in the same order, so the split gives the fused kernel's bits. (A browser's 10
 * storage buffers hold a SwiGLU mixture's passes, 9 each, not its fused kernel's 11.)
 */
export function mixBackwardPasses(
  out: MixBackwardOutputs,
  source: (out: MixBackwardOutputs) => KernelSource,
  maxStorageBuffers: number,
): MixBackwardOutputs[] {
  const wanted = range(out.grads.length).filter((k) => out.grads[k]);
  const buffers = storageBufferCount(bindingKinds(source(out).bindings));
  if (wanted.length < 2 || buffers <= maxStorageBuffers) return [out];
  return wanted.map((k, i) => ({
    grads: out.grads.map((_, j) => j === k),
    sums: out.sums,
    dgate: out.dgate && i === 0,
  }));
}

/** The entries of the per-branch `list` (null where not made) that `pass` writes dp_kj for. */
export function passBranches<T>(pass: MixBackwardOutputs, list: readonly (T | null)[]): T[] {
  return list.filter((_, k) => pass.grads[k]) as T[];
}

/**
 * dgate[n, e] (+)= Σ_tiles partial[tile, n, e] (+ dy[n]·b_o) + s·u_oe[n]·v_oe[n]: dy·y_e, the
 * terms of expert e's output (frozen product, bias, low-rank delta), in a fixed order. With
 * `routes`, expert e's row of n is n's slot for e, and where n's gate does not select e the
 * entry gets 0 (added: left as it is): y_e was never computed there, and the top-k gate's
 * backward (kernels/topk_gate.ts) reads no gradient of an unselected gate (k ≥ 2 scales it by
 * that gate, 0; k = 1 reads the kept expert's only), so the router's gradient is exact.
 */
export function dgateWgsl(
  d: MixtureDims,
  scale: number,
  withBias: boolean,
  accumulate: boolean,
  index: string,
  routes?: RouteLayout,
): KernelSource {
  const { rows, embd, rank, experts } = d;
  const dy = new Matrix("dy", embd, "read");
  const bias = new Matrix("bias", embd, "read");
  const up = new Matrix("up", rank, "read");
  const vo = new Matrix("vo", rank, "read");
  const matrices = [dy, ...(withBias ? [bias] : []), up, vo];
  // Expert e's row of token n in u_o, v_o and the partials.
  const find = routes
    ? `
  var row = 0u;
  var found = false;
  for (var i = 0u; i < ${routes.perRow}u; i++) {
    if (route_has(n, i) && route_expert(n, i) == e) { row = route_slot(n, i); found = true; }
  }
  if (!found) { ${accumulate ? "" : "dgate[id] = 0.0; "}return; }`
    : `
  let row = e * ${rows}u + n;`;
  const partialAt = routes ? `t * ${routes.slots}u + row` : `t * ${rows * experts}u + id`;
  const code = `
${matrices.map((m) => m.functions()).join("\n")}
${routes?.functions() ?? ""}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${rows * experts}u) { return; }
  let n = id / ${experts}u;
  let e = id % ${experts}u;${find}
  var frozen = 0.0;
  for (var t = 0u; t < ${mixTile(d).colTiles}u; t++) { frozen += partial[${partialAt}]; }${
    withBias
      ? `
  var biased = 0.0;
  for (var c4 = 0u; c4 < ${dy.groups}u; c4++) { biased += dot(${dy.load("n", "c4")}, ${
        bias.load("0u", "c4")
      }); }`
      : ""
  }
  var low = 0.0;
  for (var q = 0u; q < ${up.groups}u; q++) { low += dot(${up.load("row", "q")}, ${
    vo.load("row", "q")
  }); }
  dgate[id] = ${accumulate ? "dgate[id] + " : ""}frozen + ${withBias ? "biased + " : ""}${
    floatLiteral(scale)
  } * low;
}`;
  const bindings = [
    ["partial", "read", "array<f32>"] as const,
    ...matrices.map((m) => m.binding),
    ["dgate", "rw", "array<f32>"] as const,
    ...(routes ? [routes.binding()] : []),
  ];
  return { bindings, code };
}
