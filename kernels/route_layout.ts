// Where the mixture's sparse dispatch keeps its routes: which tokens each expert serves, in one
// u32 tensor that kernels/expert_routes.ts fills from the gate and every routed kernel reads
// through the WGSL accessors below. Tokens are grouped by expert into "slots": expert e owns
// the `count_e` slots from `start_e`, its tokens in increasing order, the experts in increasing
// order; a per-slot tensor ([S, ·], S = k·N) keeps expert e's row for token n at its slot. Each
// token lists its slots (at most k, in increasing expert order), which is the fixed order the
// gated outputs are combined in. Sections, in order:
//   starts [E], counts [E], tokens [S] (the token of each slot),
//   slots [N, k] (token n's i-th slot plus one; 0 where n has fewer than i + 1 experts),
//   experts [N, k] (the expert of that slot).
// A slot past Σ count_e (a row of the gate with fewer than k nonzero entries) is never read.
// Kernels that walk the slots in tiles of `size` rows give each expert ceil(count_e / size) tiles,
// the experts in order (route_tile): a tile never holds two experts' rows, and only the tiles
// that hold rows are dispatched, at most ceil(S / size) + E of them (`tiles`).
import type { Binding } from "../engine/bindings.ts";

export class RouteLayout {
  /** S: the slots, k per token, the most a gate with at most k nonzero entries per row fills. */
  readonly slots: number;

  constructor(
    /** N: the tokens (rows of the gate). */
    readonly rows: number,
    readonly experts: number,
    /** k: the most experts a token is routed to. */
    readonly perRow: number,
  ) {
    this.slots = rows * perRow;
  }

  /** The tiles of `size` rows a routed kernel dispatches: enough for any split of the slots. */
  tiles(size: number): number {
    const { rows, experts, slots } = this;
    return Math.min(experts * Math.ceil(rows / size), Math.ceil(slots / size) + experts);
  }

  /** u32 words of the route tensor. */
  get size(): number {
    return 2 * this.experts + this.slots + 2 * this.rows * this.perRow;
  }

  /** The binding the routed kernels read it through (the builder binds it "rw"). */
  binding(access: "read" | "rw" = "read"): Binding {
    return ["route", access, "array<u32>"];
  }

  /** Offsets of the sections in words. */
  get sections(): Record<"starts" | "counts" | "tokens" | "choiceSlots" | "choiceExperts", number> {
    const { experts: e, slots: s, rows: n, perRow: k } = this;
    const choices = 2 * e + s;
    return {
      starts: 0,
      counts: e,
      tokens: 2 * e,
      choiceSlots: choices,
      choiceExperts: choices + n * k,
    };
  }

  /**
   * WGSL accessors: route_start(e), route_count(e), route_token(slot), for token n's i-th route
   * route_has(n, i), route_slot(n, i), route_expert(n, i), and the tiles of `size` rows:
   * route_first_tile(e, size), the first of expert e's, and route_tile(t, size), tile t's expert
   * and first local row (expert E past the last tile).
   */
  functions(): string {
    const { starts, counts, tokens, choiceSlots: slots, choiceExperts: of } = this.sections;
    const { experts, perRow: k } = this;
    return `
fn route_start(e: u32) -> u32 { return route[${starts}u + e]; }
fn route_count(e: u32) -> u32 { return route[${counts}u + e]; }
fn route_first_tile(e: u32, size: u32) -> u32 {
  var first = 0u;
  for (var f = 0u; f < e; f++) { first += (route_count(f) + size - 1u) / size; }
  return first;
}
fn route_tile(t: u32, size: u32) -> vec2u {
  var first = 0u;
  for (var e = 0u; e < ${experts}u; e++) {
    let tiles = (route_count(e) + size - 1u) / size;
    if (t < first + tiles) { return vec2u(e, (t - first) * size); }
    first += tiles;
  }
  return vec2u(${experts}u, 0u);
}
fn route_token(slot: u32) -> u32 { return route[${tokens}u + slot]; }
fn route_has(n: u32, i: u32) -> bool { return route[${slots}u + n * ${k}u + i] != 0u; }
fn route_slot(n: u32, i: u32) -> u32 { return route[${slots}u + n * ${k}u + i] - 1u; }
fn route_expert(n: u32, i: u32) -> u32 { return route[${of}u + n * ${k}u + i]; }`;
  }
}
