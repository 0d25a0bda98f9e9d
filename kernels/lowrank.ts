// The kernels of low-rank (LoRA) products, for plain LoRA (kernels/lora.ts) and for the mixture
// of E LoRA experts (kernels/moe_mlp.ts) alike. A kernel either reads one matrix per operand
// (`stacked` false: plain LoRA, E = 1) or expert e's matrix of stacks along a leading E, with
// the experts in the invocation index (contract, outer) or summed in a loop (expand). Three
// shapes, r being the small rank:
//   contract: [N, K]·(small weight) → [N, r], K-long dots, CONTRACT_ROWS rows × a rank tile;
//   expand:   [N, r]·(small weight) → [N, W], r-long dots, TILE_ROWS × TILE_GROUPS tiles, with
//             an epilogue (add the frozen layer's output, overwrite or accumulate);
//   outer:    Σ over rows of (big row) ⊗ (small row) → a weight's gradient, as partial sums over
//             blocks of BLOCK_ROWS rows, then a fixed-order sum over the blocks (`sumBlocks`;
//             routed, each expert's own blocks in order): deterministic, no atomics.
// The big operand of contract and outer may be an activation of stored tensors (the mixture's
// h_j, recomputed on load from its saved pre-activations: kernels/activation.ts).
// With `routes` (the mixture's sparse dispatch, kernels/route_layout.ts) expert e walks only the
// tokens routed to it: its own operands are per-slot [S, ·] tensors, the shared ones ([N, ·], x
// and dy) are read at each slot's token, the gate at (token, e); one more binding, the route, is
// the last resource. The tiles and the code fragments are in kernels/tile_codegen.ts.
import type { Command, Engine } from "../engine/device.ts";
import type { GradTarget, Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { type Activation, activationInputs } from "./activation.ts";
import { floatLiteral } from "./literals.ts";
import type { RouteLayout } from "./route_layout.ts";
import {
  BLOCK_ROWS,
  CONTRACT_ROWS,
  contractInvocations,
  contractLoop,
  contractStores,
  expandLoop,
  ExpertRows,
  GATE,
  gateLoads,
  gateOf,
  type KernelSource,
  launch,
  Matrix,
  outerInvocations,
  outerStep,
  outerStores,
  outerZeros,
  range,
  rankTile,
  RowTile,
  TILE_GROUPS,
  TILE_ROWS,
  WIDE_TILE,
  WORKGROUP,
  zeroRegisters,
} from "./tile_codegen.ts";

/** The rows, rank and experts of a low-rank kernel; plain LoRA is `stacked` false, E = 1. */
export interface LowRank {
  rows: number;
  rank: number;
  experts: number;
  /** The low-rank tensors are stacks of E experts' matrices. */
  stacked: boolean;
  /** Each expert walks only its routed tokens (needs `stacked`); absent: every expert all rows. */
  routes?: RouteLayout;
}

/** Where the kernel of `s` finds each expert's rows. */
function expertRows(s: LowRank): ExpertRows {
  return s.routes ? ExpertRows.routed(s.routes) : ExpertRows.dense(s.rows);
}

export interface ContractSpec extends LowRank {
  k: number;
  /** act is [E, N, K] (expert e reads its own rows) rather than one [N, K] shared by all. */
  actPerExpert: boolean;
  /** What is contracted of act (and of act_1, ... when the activation reads several tensors). */
  activation: Activation;
  /** W_e(k, j) = weight[e, j, k] ("rank-major", A [E, r, K]) or weight[e, k, j] (B [E, K, r]). */
  weight: "rank-major" | "k-major";
  scale: number;
}

/**
 * result [E, N, r]: result[e, n, j] = scale · Σ_k act_e[n, k] · W_e(k, j), act_e being the
 * activation of the stored tensors. An invocation holds CONTRACT_ROWS rows × one rank tile of one
 * expert (acc_t_q: row t, rank group q).
 */
function contractWgsl(s: ContractSpec, index: string): KernelSource {
  const { k, rank, experts, stacked } = s;
  const tile = rankTile(rank);
  const space = expertRows(s);
  const acts = activationInputs(s.activation, "act", k);
  const w = new Matrix("weight", s.weight === "rank-major" ? k : rank, "read");
  const result = new Matrix("result", rank, "rw");
  // Row t's place in act, found once before the loop (routed, a load of the slot's token).
  const actRows = range(CONTRACT_ROWS).map((t) => {
    const row = space.clamp(`row0 + ${t}u`);
    return `let act_row${t} = ${s.actPerExpert ? space.own(row, true) : space.shared(row)};`;
  });
  const actLoad = (t: number) =>
    s.activation.value(acts.map((act) => act.load(`act_row${t}`, "k4")));
  const code = `${s.activation.prelude}
${acts.map((act) => act.functions()).join("\n")}
${w.functions()}
${result.functions()}
${space.functions()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${contractInvocations(space, rank, experts)}u) { return; }
  let j0 = (id % ${tile.tiles}u) * ${4 * tile.groups}u;
  ${
    space.routes
      ? space.locate(`id / ${tile.tiles}u`, CONTRACT_ROWS)
      : `${stacked ? `let e = (id / ${tile.tiles}u) % ${experts}u;` : ""}
  let row0 = (id / ${tile.tiles * experts}u) * ${CONTRACT_ROWS}u;`
  }
  ${actRows.join("\n  ")}
  // acc_t_q[c] = Σ_k act_e[row0 + t, k] · W_e(k, j0 + 4q + c)
  ${zeroRegisters("acc", CONTRACT_ROWS, tile.groups, "  ")}
  ${contractLoop(k, rank, actLoad, w, s.weight, stacked)}
  ${contractStores(result, space, s.scale, stacked)}
}`;
  const bindings = [...acts.map((act) => act.binding), w.binding, result.binding];
  return { bindings: [...bindings, ...space.bindings], code };
}

/** The dispatch of a contraction over [act (, act_1, ...), weight, result (, route)]. */
export function contract(
  engine: Engine,
  label: string,
  spec: ContractSpec,
  resources: readonly Tensor[],
): Command {
  const invocations = contractInvocations(expertRows(spec), spec.rank, spec.experts);
  return launch(engine, label, (index) => contractWgsl(spec, index), invocations, resources);
}

export interface ExpandSpec extends LowRank {
  wide: number;
  /** M_e(j, w) = weight[e, w, j] ("wide-major", B [E, W, r]) or weight[e, j, w] (A [E, r, W]). */
  weight: "wide-major" | "rank-major";
  scale: number;
  /** small rows are scaled by the gate of their row and expert. */
  gated: boolean;
  /** Also add (Σ_e g[n, e])·bias[w] (the gated mixture's share of a frozen bias). */
  bias: boolean;
  /** Add the frozen layer's output `base` (LoRA's forward), or overwrite, or accumulate. */
  epilogue: "base" | "store" | "add";
}

/**
 * result[n, w] (+)= (base[n, w] +) scale·Σ_e Σ_j (g[n, e]·)small[e, n, j]·M_e(j, w)
 * (+ (Σ_e g[n, e])·bias[w]). An invocation holds TILE_ROWS rows × TILE_GROUPS adjacent column
 * groups (acc_t_g: row t, group g).
 */
function expandWgsl(s: ExpandSpec, index: string): KernelSource {
  const { rows, wide, rank, experts, stacked } = s;
  const small = new Matrix("small", rank, "read");
  const w = new Matrix("weight", s.weight === "rank-major" ? wide : rank, "read");
  const result = new Matrix("result", wide, "rw");
  const bias = new Matrix("bias", wide, "read");
  const base = new Matrix("base", wide, "read");
  const space = expertRows(s);
  const tile = new RowTile(rows, wide, space);
  const T = range(TILE_ROWS);
  // Dense: one output row per token, the experts summed in a loop; routed: one per slot.
  const loop = stacked && !s.routes;
  const write = (t: number, g: number) => {
    const [row, col] = [`row0 + ${t}u`, `c0 + ${g}u`];
    const value = `${floatLiteral(s.scale)} * acc${t}${g}` +
      (s.bias ? ` + gsum${t} * ${bias.load("0u", col)}` : "");
    const at = space.own(row, false);
    if (s.epilogue === "base") {
      return result.store(at, col, `${base.load(space.shared(row), col)} + ${value}`);
    }
    return result.store(at, col, value, s.epilogue === "add");
  };
  const indent = loop ? "    " : "  ";
  const expert = [
    s.gated ? gateLoads(tile, experts) : "",
    s.bias ? T.map((t) => `gsum${t} += g${t};`).join(" ") : "",
    expandLoop(tile, small, w, s.weight, { stacked, gated: s.gated }, indent),
  ].join(`\n${indent}`);
  const code = `
${small.functions()}
${w.functions()}
${result.functions()}
${s.bias ? bias.functions() : ""}
${s.epilogue === "base" ? base.functions() : ""}
${space.functions()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  ${tile.start()}
  // acc_t_g[c] = Σ_e Σ_j (g[row0 + t, e]·)small_e[row0 + t, j] · M_e(j, 4·(c0 + g) + c)
  ${zeroRegisters("acc", TILE_ROWS, TILE_GROUPS, "  ")}
  ${s.bias ? T.map((t) => `var gsum${t} = 0.0;`).join(" ") : ""}
  ${loop ? `for (var e = 0u; e < ${experts}u; e++) {\n    ${expert}\n  }` : expert}
  ${tile.guardEach(write)}
}`;
  const bindings = [
    small.binding,
    w.binding,
    result.binding,
    ...(s.gated ? [GATE] : []),
    ...(s.bias ? [bias.binding] : []),
    ...(s.epilogue === "base" ? [base.binding] : []),
    ...space.bindings,
  ];
  return { bindings, code };
}

/**
 * The dispatch of an expansion over [small, weight, result, gate?, bias?, base? (, route)]. Routed,
 * result is per slot and each slot's row holds its own expert's term alone.
 */
export function expand(
  engine: Engine,
  label: string,
  spec: ExpandSpec,
  resources: readonly Tensor[],
): Command {
  const invocations = new RowTile(spec.rows, spec.wide, expertRows(spec)).invocations;
  return launch(engine, label, (index) => expandWgsl(spec, index), invocations, resources);
}

export interface OuterSpec extends LowRank {
  wide: number;
  /** big is [E, N, W] (per expert) rather than one [N, W] shared by all. */
  bigPerExpert: boolean;
  /** What is multiplied of big (and of big_1, ... when the activation reads several tensors). */
  activation: Activation;
  /** small rows are scaled by the gate of their row and expert. */
  gated: boolean;
  /** Each expert's partial is [r, W] (an A's gradient) or [W, r] (a B's). */
  layout: "rank-major" | "wide-major";
}

/**
 * partial[b, e] = Σ_{n in block b} big_e[n, :] ⊗ (g[n, e]·)small_e[n, :], blocks of BLOCK_ROWS
 * rows. An invocation holds WIDE_TILE column groups × one rank tile of one expert of one block
 * (acc_g_c_q: wide column 4·(w0 + g) + c, rank group q).
 */
function outerWgsl(s: OuterSpec, index: string): KernelSource {
  const { wide, rank, experts, stacked } = s;
  const tile = rankTile(rank);
  const space = expertRows(s);
  const bigs = activationInputs(s.activation, "big", wide);
  const small = new Matrix("small", rank, "read");
  const partial = new Matrix("partial", s.layout === "wide-major" ? rank : wide, "rw");
  const groups = bigs[0].groups;
  const wideTiles = Math.ceil(groups / WIDE_TILE);
  const bigLoad = (c4: string) => s.activation.value(bigs.map((big) => big.load("big_row", c4)));
  // Dense: block b of expert e, partial b·E + e; routed: block b is one of an expert's blocks
  // (route_tile), partial b.
  const block = space.routes
    ? space.locate("b", BLOCK_ROWS)
    : `${stacked ? `let e = (id / ${wideTiles * tile.tiles}u) % ${experts}u;` : ""}
  let row0 = b * ${BLOCK_ROWS}u;`;
  const code = `${s.activation.prelude}
${bigs.map((big) => big.functions()).join("\n")}
${small.functions()}
${partial.functions()}
${space.functions()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${outerInvocations(space, wide, rank, experts)}u) { return; }
  let w0 = (id % ${wideTiles}u) * ${WIDE_TILE}u;
  let j0 = ((id / ${wideTiles}u) % ${tile.tiles}u) * ${4 * tile.groups}u;
  let b = id / ${wideTiles * tile.tiles * (space.routes ? 1 : experts)}u;
  ${block}
  // acc_g_c_q = Σ_n big_e[n, 4·(w0 + g) + c] · small_e[n, j0 + 4q .. +3]
  ${outerZeros(rank)}
  for (var n = row0; n < min(row0 + ${BLOCK_ROWS}u, ${space.count}); n++) {
    let token = ${space.shared("n")};
    let big_row = ${s.bigPerExpert ? space.own("n", true) : "token"};
    ${s.gated ? `let g = ${gateOf("token", experts)};` : ""}
    ${outerStep(small, space.own("n", stacked), s.gated, groups, bigLoad)}
  }
  ${
    outerStores(
      partial,
      s.layout,
      wide,
      rank,
      stacked && !space.routes ? `(b * ${experts}u + e)` : "b",
    )
  }
}`;
  return {
    bindings: [
      ...bigs.map((big) => big.binding),
      small.binding,
      partial.binding,
      ...(s.gated ? [GATE] : []),
      ...space.bindings,
    ],
    code,
  };
}

/**
 * target (+)= sumScale · Σ_b partial[b] for the outer product of `big` (the tensors the
 * activation reads) and `small` (and `gate` when gated): the partial sums over row blocks, then
 * their fixed-order sum (routed: each expert's sum over its own blocks).
 */
export function outer(
  tape: Tape,
  label: string,
  spec: OuterSpec,
  operands: { big: readonly Tensor[]; small: Tensor; gate?: Tensor; route?: Tensor },
  sumScale: number,
  target: GradTarget,
): Command[] {
  const { wide, rank, experts, routes } = spec;
  const space = expertRows(spec);
  const shape = spec.layout === "wide-major" ? [wide, rank] : [rank, wide];
  const blocks = routes ? [routes.tiles(BLOCK_ROWS)] : [Math.ceil(spec.rows / BLOCK_ROWS), experts];
  const partial = tape.tensor([...blocks, ...shape], `${label} partials`);
  const { big, small, gate, route } = operands;
  if (routes && !route) throw new Error(`${label}: a routed outer product needs the route`);
  const resources = [
    ...big,
    small,
    partial,
    ...(spec.gated && gate ? [gate] : []),
    ...(routes ? [route!] : []),
  ];
  return [
    launch(
      tape.engine,
      `${label} partials`,
      (index) => outerWgsl(spec, index),
      outerInvocations(space, wide, rank, experts),
      resources,
    ),
    routes
      ? sumExpertBlocks(tape.engine, label, partial, routes, sumScale, target, route!)
      : sumBlocks(tape.engine, label, partial, sumScale, target.tensor, target.accumulate),
  ];
}

/** out (+)= scale · Σ_b partial[b] over `blocks` blocks of `size` values, in block order. */
function sumBlocksWgsl(
  size: number,
  blocks: number,
  scale: number,
  accumulate: boolean,
  index: string,
): KernelSource {
  const vec4 = size % 4 === 0;
  const type = vec4 ? "vec4f" : "f32";
  const n = vec4 ? size / 4 : size;
  const code = `
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${n}u) { return; }
  var sum = partial[i];${
    blocks > 1
      ? `
  for (var b = 1u; b < ${blocks}u; b++) { sum += partial[b * ${n}u + i]; }`
      : ""
  }
  result[i] = ${accumulate ? "result[i] + " : ""}${floatLiteral(scale)} * sum;
}`;
  return {
    bindings: [["partial", "read", `array<${type}>`], ["result", "rw", `array<${type}>`]],
    code,
  };
}

/** result (+)= scale · Σ over the leading blocks of `partial` (one block: a scaled copy/add). */
export function sumBlocks(
  engine: Engine,
  label: string,
  partial: Tensor,
  scale: number,
  result: Tensor,
  accumulate: boolean,
): Command {
  const blocks = partial.size / result.size;
  const vec4 = result.size % 4 === 0;
  return launch(
    engine,
    label,
    (index) => sumBlocksWgsl(result.size, blocks, scale, accumulate, index),
    vec4 ? result.size / 4 : result.size,
    [partial, result],
  );
}

/**
 * result[e] (+)= scale · Σ over expert e's blocks b of partial[b] (route_tile's blocks of
 * BLOCK_ROWS rows, in order; none, a sum of 0), for each expert's `size` values.
 */
function sumExpertBlocksWgsl(
  size: number,
  routes: RouteLayout,
  scale: number,
  accumulate: boolean,
  index: string,
): KernelSource {
  const vec4 = size % 4 === 0;
  const type = vec4 ? "vec4f" : "f32";
  const n = vec4 ? size / 4 : size;
  const code = `${routes.functions()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${routes.experts * n}u) { return; }
  let e = i / ${n}u;
  let first = route_first_tile(e, ${BLOCK_ROWS}u);
  let last = first + (route_count(e) + ${BLOCK_ROWS - 1}u) / ${BLOCK_ROWS}u;
  var sum = ${type}(0.0);
  for (var b = first; b < last; b++) { sum += partial[b * ${n}u + i % ${n}u]; }
  result[i] = ${accumulate ? "result[i] + " : ""}${floatLiteral(scale)} * sum;
}`;
  return {
    bindings: [
      ["partial", "read", `array<${type}>`],
      ["result", "rw", `array<${type}>`],
      routes.binding(),
    ],
    code,
  };
}

/** target (+)= scale · each expert's sum of its blocks of `partial` (an outer's, routed). */
function sumExpertBlocks(
  engine: Engine,
  label: string,
  partial: Tensor,
  routes: RouteLayout,
  scale: number,
  target: GradTarget,
  route: Tensor,
): Command {
  const size = target.tensor.size / routes.experts;
  return launch(
    engine,
    label,
    (index) => sumExpertBlocksWgsl(size, routes, scale, target.accumulate, index),
    (size % 4 === 0 ? size / 4 : size) * routes.experts,
    [partial, target.tensor, route],
  );
}
