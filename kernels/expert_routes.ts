// The mixture's sparse dispatch: which tokens each expert serves, and the gathering of the
// experts' per-slot outputs back to their tokens.
//   routeTokens: a counting sort of the gate's nonzero entries (kernels/route_layout.ts says
//     where each part lands). One invocation per expert counts the nonzero entries of the experts
//     before it (its first slot), then walks the tokens in order, giving each token it serves
//     the next slot and telling the token where: slots grouped by expert, tokens ascending, the
//     same on every run. No atomics; the work is N·E per expert, small beside the experts' own.
//   combine: out[n] (+)= Σ_i (g[n, e_i]·)act(in[slot_i(n)]) over token n's slots in increasing
//     expert order, the fixed order that makes the sum the same bits on every run (and the dense
//     mixture's order: the experts a token does not use add exact zeros there).
import type { Command, Engine } from "../engine/device.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { type Activation, activationInputs } from "./activation.ts";
import type { RouteLayout } from "./route_layout.ts";
import {
  GATE,
  type KernelSource,
  launch,
  Matrix,
  range,
  RowTile,
  TILE_GROUPS,
  TILE_ROWS,
  WORKGROUP,
  zeroRegisters,
} from "./tile_codegen.ts";

/** The sort: invocation e fills expert e's slots and its tokens' entries of the route. */
function routeWgsl(routes: RouteLayout, index: string): KernelSource {
  const { rows, experts, perRow, slots } = routes;
  const { starts, counts, tokens, choiceSlots, choiceExperts } = routes.sections;
  const code = `
fn selected(n: u32, e: u32) -> bool { return gate[n * ${experts}u + e] != 0.0; }
/** How many of the experts before e token n's gate selects: e's place among n's routes. */
fn before(n: u32, e: u32) -> u32 {
  var count = 0u;
  for (var f = 0u; f < e; f++) { count += select(0u, 1u, selected(n, f)); }
  return count;
}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let e = ${index};
  if (e >= ${experts}u) { return; }
  var start = 0u;
  for (var n = 0u; n < ${rows}u; n++) { start += before(n, e); }
  var count = 0u;
  for (var n = 0u; n < ${rows}u; n++) {
    if (!selected(n, e)) { continue; }
    let i = before(n, e);
    let slot = start + count;
    // Only a gate with more than k nonzero entries in a row (NaN logits) could pass these.
    if (i >= ${perRow}u || slot >= ${slots}u) { continue; }
    route[${tokens}u + slot] = n;
    route[${choiceSlots}u + n * ${perRow}u + i] = slot + 1u;
    route[${choiceExperts}u + n * ${perRow}u + i] = e;
    count++;
  }
  route[${starts}u + e] = start;
  route[${counts}u + e] = count;
}`;
  return { bindings: [GATE, routes.binding("rw")], code };
}

/** The route [routes.size] u32 of `gate` [N, E], and the commands that fill it. */
export function routeTokens(
  tape: Tape,
  label: string,
  gate: Tensor,
  routes: RouteLayout,
): { route: Tensor; commands: Command[] } {
  const route = tape.tensor([routes.size], `${label} route`, "u32");
  const commands: Command[] = [
    // Token slots a row does not fill must read as "none" (0).
    { kind: "clear", label: `${label} route clear`, tensor: route },
    launch(
      tape.engine,
      `${label} route`,
      (index) => routeWgsl(routes, index),
      routes.experts,
      [gate, route],
    ),
  ];
  return { route, commands };
}

export interface CombineSpec {
  routes: RouteLayout;
  /** Columns of the inputs and the output. */
  wide: number;
  /** What is summed of the per-slot inputs (the mixture's h from its saved pre-activations). */
  activation: Activation;
  /** Each term is scaled by the gate of its token and expert. */
  gated: boolean;
  /** Add to the output, or overwrite it. */
  accumulate: boolean;
}

/**
 * result[n, w] (+)= Σ_i (g[n, e_i]·)act(in[slot_i(n)])[w]: a RowTile of TILE_ROWS tokens ×
 * TILE_GROUPS column groups per invocation, the routes in order.
 */
function combineWgsl(s: CombineSpec, index: string): KernelSource {
  const { routes, wide } = s;
  const inputs = activationInputs(s.activation, "slot_in", wide);
  const result = new Matrix("result", wide, "rw");
  const tile = new RowTile(routes.rows, wide);
  const G = range(TILE_GROUPS);
  const term = (t: number) => {
    const weight = s.gated
      ? `gate[token${t} * ${routes.experts}u + route_expert(token${t}, i)]`
      : "";
    return `if (route_has(token${t}, i)) {
      let slot = route_slot(token${t}, i);
      ${s.gated ? `let w = ${weight};` : ""}
      ${
      G.map((g) => {
        const value = s.activation.value(inputs.map((m) => m.load("slot", tile.group(g))));
        return `acc${t}${g} += ${s.gated ? "w * " : ""}${value};`;
      }).join("\n      ")
    }
    }`;
  };
  const code = `${s.activation.prelude}
${[...inputs, result].map((m) => m.functions()).join("\n")}
${routes.functions()}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  ${tile.start()}
  ${range(TILE_ROWS).map((t) => `let token${t} = ${tile.row(t)};`).join(" ")}
  ${zeroRegisters("acc", TILE_ROWS, TILE_GROUPS, "  ")}
  for (var i = 0u; i < ${routes.perRow}u; i++) {
    ${range(TILE_ROWS).map(term).join("\n    ")}
  }
  ${
    tile.guardEach((t, g) =>
      result.store(`row0 + ${t}u`, `c0 + ${g}u`, `acc${t}${g}`, s.accumulate)
    )
  }
}`;
  const bindings = [
    ...inputs.map((m) => m.binding),
    result.binding,
    ...(s.gated ? [GATE] : []),
    routes.binding(),
  ];
  return { bindings, code };
}

/** The dispatch of a combine over [in (, in_1, ...), result, gate?, route]. */
export function combine(
  engine: Engine,
  label: string,
  spec: CombineSpec,
  resources: readonly Tensor[],
): Command {
  const invocations = new RowTile(spec.routes.rows, spec.wide).invocations;
  return launch(engine, label, (index) => combineWgsl(spec, index), invocations, resources);
}
