// WGSL fragments of the low-rank kernels (kernels/lowrank.ts) and the mixture's fused kernels
// (kernels/mixture.ts): matrices read 4 columns at a time (Matrix), the register tiles' sizes,
// and the pieces of generated code they have in common (accumulator declarations, the inner
// loops of the contract, expand and outer shapes, their guarded stores, the gates), plus the
// dispatch of a generated kernel. A fragment reads expert e's matrix of a stack along a leading
// E when `stacked` (the mixture) and the one matrix otherwise (plain LoRA). What made these fast
// on lavapipe (measured, about 3× over a first version): hot loops free of bounds checks,
// accumulators as named registers written out by the generator rather than private arrays, and
// tiles that reuse each loaded vec4 several times (the sizes below won side-by-side runs at
// GPT-2's MLP shapes). The rows of expert e are all N rows (dense) or the tokens routed to it
// (the sparse dispatch, kernels/route_layout.ts): ExpertRows says where each operand keeps them.
import type { Binding } from "../engine/bindings.ts";
import type { Command, Engine } from "../engine/device.ts";
import type { Tensor } from "../engine/tensor.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";
import { floatLiteral } from "./literals.ts";
import type { RouteLayout } from "./route_layout.ts";

export const WORKGROUP = 64;
/** Rows of the big operand each invocation of a contraction handles. */
export const CONTRACT_ROWS = 8;
/** Rows × adjacent column groups (vec4s) each invocation of an expand (or elementwise) writes. */
export const TILE_ROWS = 4;
export const TILE_GROUPS = 2;
/** Column groups (vec4s of the wide dimension) each invocation of an outer product handles. */
export const WIDE_TILE = 4;
/** Rows summed into one partial of an outer product. */
export const BLOCK_ROWS = 64;

export const range = (n: number) => Array.from({ length: n }, (_, i) => i);
export const XYZW = "xyzw";

/**
 * A matrix [rows, cols] bound as storage, read and written 4 consecutive columns at a time
 * (column group c4 = columns 4·c4 .. 4·c4+3). When cols is a multiple of 4 these are plain vec4
 * accesses with no checks (hot loops stay branch-free); otherwise helpers mask the columns past
 * the end (read as 0, never written).
 */
export class Matrix {
  readonly groups: number;
  constructor(readonly name: string, readonly cols: number, readonly access: "read" | "rw") {
    this.groups = Math.ceil(cols / 4);
  }

  get aligned(): boolean {
    return this.cols % 4 === 0;
  }

  /** Its binding: vec4s when aligned, else f32s. */
  get binding(): Binding {
    return [this.name, this.access, `array<${this.aligned ? "vec4f" : "f32"}>`];
  }

  /** The masked load (and store/add) functions of an unaligned matrix; none when aligned. */
  functions(): string {
    const { name, cols } = this;
    if (this.aligned) return "";
    const each = (body: string) =>
      `for (var i = 0u; i < 4u; i++) { let col = 4u * c4 + i; if (col < ${cols}u) { ${body} } }`;
    const load = `
fn ${name}_load(row: u32, c4: u32) -> vec4f {
  var v = vec4f(0.0);
  ${each(`v[i] = ${name}[row * ${cols}u + col];`)}
  return v;
}`;
    const write = `
fn ${name}_store(row: u32, c4: u32, v: vec4f) { ${each(`${name}[row * ${cols}u + col] = v[i];`)} }
fn ${name}_add(row: u32, c4: u32, v: vec4f) { ${each(`${name}[row * ${cols}u + col] += v[i];`)} }`;
    return load + (this.access === "read" ? "" : write);
  }

  /** WGSL expression: the vec4 at (row, c4). */
  load(row: string, c4: string): string {
    return this.aligned
      ? `${this.name}[(${row}) * ${this.groups}u + ${c4}]`
      : `${this.name}_load(${row}, ${c4})`;
  }

  /** WGSL statement: writes (or with `add`, adds) the vec4 at (row, c4). */
  store(row: string, c4: string, value: string, add = false): string {
    if (!this.aligned) return `${this.name}_${add ? "add" : "store"}(${row}, ${c4}, ${value});`;
    const at = `${this.name}[(${row}) * ${this.groups}u + ${c4}]`;
    return `${at} = ${add ? `${at} + ` : ""}${value};`;
  }
}

/** `index` clamped to `last` when it can pass it (written out only then). */
export function clamp(index: string, last: number, canPass: boolean): string {
  return canPass ? `min(${index}, ${last}u)` : index;
}

/** Row `row` of expert e's matrix in a stack of `height`-row matrices, or of the one matrix. */
export function stackRow(row: string, height: number, stacked: boolean): string {
  return stacked ? `e * ${height}u + ${row}` : row;
}

/**
 * The rows a kernel walks for expert e, and where its operands keep them. Dense: every expert
 * has all `rows` rows; an operand of the expert's own keeps row n at e·rows + n when stacked
 * ([E, N, ·]) or at n (one matrix), a shared operand ([N, ·], x or dy) at n. Routed: expert e has
 * the count_e tokens routed to it; an own operand ([S, ·]) keeps its i-th at slot start_e + i,
 * a shared one at that slot's token. Row expressions take the expert's local row i. A dense
 * kernel finds e and its tile of rows in its invocation index; a routed one finds the tile's
 * expert from the route (`locate`), and dispatches only the tiles that hold rows (`tiles`):
 * dispatching E·N rows where k·N are routed costs lavapipe ~1 ms per 1,500 idle workgroups.
 */
export class ExpertRows {
  private constructor(readonly rows: number, readonly routes: RouteLayout | null) {}

  static dense(rows: number): ExpertRows {
    return new ExpertRows(rows, null);
  }

  /** The rows of `routes`: at most N per expert, in E segments of the slots. */
  static routed(routes: RouteLayout): ExpertRows {
    return new ExpertRows(routes.rows, routes);
  }

  /**
   * Tiles of `size` rows a kernel over `experts` stacked experts dispatches: every expert's
   * ceil(N / size) (dense), or those holding routed rows.
   */
  tiles(size: number, experts: number): number {
    return this.routes?.tiles(size) ?? Math.ceil(this.rows / size) * experts;
  }

  /**
   * Routed, WGSL finding tile `tile`'s expert e and first local row `row0` (returning past the
   * last tile), then `seg` and `count`, the expert's first slot and rows.
   */
  locate(tile: string, size: number): string {
    const { routes } = this;
    if (!routes) throw new Error("ExpertRows.locate: dense rows are found from the index");
    return `let at = route_tile(${tile}, ${size}u);
  let e = at.x;
  if (e >= ${routes.experts}u) { return; }
  let row0 = at.y;
  let seg = route_start(e);
  let count = route_count(e);`;
  }

  /** WGSL u32: how many rows expert e has. */
  get count(): string {
    return this.routes ? "count" : `${this.rows}u`;
  }

  /** Local row `row` clamped to the expert's last (for loads; routed needs count ≥ 1). */
  clamp(row: string): string {
    return this.routes ? `min(${row}, count - 1u)` : `min(${row}, ${this.rows - 1}u)`;
  }

  /** The row of an operand of the expert's own (stacked or not, when dense) for local `row`. */
  own(row: string, stacked: boolean): string {
    return this.routes ? `seg + ${row}` : stackRow(row, this.rows, stacked);
  }

  /** The row of an operand every expert shares ([N, ·]) for local `row`. */
  shared(row: string): string {
    return this.routes ? `route_token(seg + ${row})` : row;
  }

  /** The route's binding (last of a routed kernel's bindings) and accessors; none when dense. */
  get bindings(): Binding[] {
    return this.routes ? [this.routes.binding()] : [];
  }

  functions(): string {
    return this.routes?.functions() ?? "";
  }
}

/**
 * Rank groups (vec4s of low-rank columns) one invocation accumulates: two when they tile the
 * rank's groups evenly, else one, so the hot loops never need a bounds check on the rank.
 */
export function rankTile(rank: number): { groups: number; tiles: number } {
  const total = Math.ceil(rank / 4);
  const groups = total % 2 === 0 ? 2 : 1;
  return { groups, tiles: total / groups };
}

/** `var <name><t><g> = vec4f(0.0);` for a tile of rows t × groups g, a line per row. */
export function zeroRegisters(name: string, rows: number, groups: number, indent: string): string {
  return range(rows).map((t) =>
    range(groups).map((g) => `var ${name}${t}${g} = vec4f(0.0);`).join(" ")
  ).join(`\n${indent}`);
}

/**
 * The loop over K, four columns k4 at a time, of a contraction into acc_t_q (CONTRACT_ROWS rows t
 * × one rank tile q from rank column j0): a_t = `actLoad(t)` (row t's vec4 at k4), then
 * acc_t_q[c] += Σ_k a_t[k] · W(k, j0 + 4q + c), where W(k, j) is weight[j, k] ("rank-major",
 * A [r, K]) or weight[k, j] ("k-major", B [K, r]). Each loaded weight vec4 serves every row.
 */
export function contractLoop(
  k: number,
  rank: number,
  actLoad: (t: number) => string,
  weight: Matrix,
  layout: "rank-major" | "k-major",
  stacked: boolean,
): string {
  const T = range(CONTRACT_ROWS), Q = range(rankTile(rank).groups), C = range(4);
  const step = layout === "rank-major"
    ? Q.map((q) =>
      C.map((c) => {
        const j = clamp(`j0 + ${4 * q + c}u`, rank - 1, rank % 4 !== 0);
        return `let w${q}${c} = ${weight.load(stackRow(j, rank, stacked), "k4")};`;
      }).join("\n    ") + "\n    " +
      T.map((t) => `acc${t}${q} += vec4f(${C.map((c) => `dot(a${t}, w${q}${c})`).join(", ")});`)
        .join("\n    ")
    ).join("\n    ")
    : C.map((c) =>
      Q.map((q) => {
        const kc = clamp(`4u * k4 + ${c}u`, k - 1, k % 4 !== 0);
        return `let w${c}${q} = ${weight.load(stackRow(kc, k, stacked), `j0 / 4u + ${q}u`)};`;
      }).join("\n    ") + "\n    " +
      T.map((t) => Q.map((q) => `acc${t}${q} += a${t}.${XYZW[c]} * w${c}${q};`).join(" "))
        .join("\n    ")
    ).join("\n    ");
  return `for (var k4 = 0u; k4 < ${Math.ceil(k / 4)}u; k4++) {
    ${T.map((t) => `let a${t} = ${actLoad(t)};`).join("\n    ")}
    ${step}
  }`;
}

/** result[row0 + t, j0 + 4q ..] = scale · acc_t_q for the contraction's rows that exist. */
export function contractStores(
  result: Matrix,
  space: ExpertRows,
  scale: number,
  stacked: boolean,
): string {
  return range(CONTRACT_ROWS).map((t) =>
    `if (row0 + ${t}u < ${space.count}) { ${
      range(rankTile(result.cols).groups).map((q) =>
        result.store(
          space.own(`row0 + ${t}u`, stacked),
          `j0 / 4u + ${q}u`,
          `${floatLiteral(scale)} * acc${t}${q}`,
        )
      ).join(" ")
    } }`
  ).join("\n  ");
}

/** Invocations of a contraction of `experts` stacked experts (1 for one unstacked weight). */
export function contractInvocations(space: ExpertRows, rank: number, experts: number): number {
  return space.tiles(CONTRACT_ROWS, experts) * rankTile(rank).tiles;
}

/**
 * The tile an invocation holds of an output [rows, cols]: TILE_ROWS rows from row0 × TILE_GROUPS
 * adjacent column groups from c0 (column tile colTile), as WGSL. When the groups do not tile
 * evenly (`ragged`), the last tile's extra groups are clamped onto the last one: loads stay in
 * range, stores are guarded. Its rows are `space`'s: rows of the output itself (dense), or the
 * local rows of the expert e the invocation serves (routed: only the tiles holding rows).
 */
export class RowTile {
  readonly groups: number;
  readonly colTiles: number;
  readonly ragged: boolean;
  constructor(
    readonly rows: number,
    readonly cols: number,
    readonly space: ExpertRows = ExpertRows.dense(rows),
  ) {
    this.groups = Math.ceil(cols / 4);
    this.colTiles = Math.ceil(this.groups / TILE_GROUPS);
    this.ragged = this.groups % TILE_GROUPS !== 0;
  }

  get invocations(): number {
    return this.space.tiles(TILE_ROWS, 1) * this.colTiles;
  }

  /**
   * WGSL statements: leave if past the last tile, else find the tile's row0, colTile and c0
   * (and, routed, its expert e from the route, leaving past the last tile that holds rows).
   */
  start(): string {
    const { colTiles, space } = this;
    if (!space.routes) {
      return `if (id >= ${this.invocations}u) { return; }
  let row0 = (id / ${colTiles}u) * ${TILE_ROWS}u;
  let colTile = id % ${colTiles}u;
  let c0 = colTile * ${TILE_GROUPS}u;`;
    }
    return `if (id >= ${this.invocations}u) { return; }
  let colTile = id % ${colTiles}u;
  let c0 = colTile * ${TILE_GROUPS}u;
  ${space.locate(`id / ${colTiles}u`, TILE_ROWS)}`;
  }

  /** Row t of the tile, clamped to the last row (for loads). */
  row(t: number): string {
    return this.space.clamp(`row0 + ${t}u`);
  }

  /** Column group g of the tile, clamped to the last group (for loads). */
  group(g: number): string {
    return clamp(`c0 + ${g}u`, this.groups - 1, this.ragged);
  }

  /** `statement`, run only where (row t, group g) is inside the output. */
  guard(t: number, g: number, statement: string): string {
    const inRange = `row0 + ${t}u < ${this.space.count}` +
      (this.ragged ? ` && c0 + ${g}u < ${this.groups}u` : "");
    return `if (${inRange}) { ${statement} }`;
  }

  /** `statement(t, g)` for every register (row t, group g) of the tile, a line each. */
  each(statement: (t: number, g: number) => string, indent: string): string {
    return range(TILE_ROWS).flatMap((t) => range(TILE_GROUPS).map((g) => statement(t, g)))
      .join(`\n${indent}`);
  }

  /** `statement(t, g)` guarded, for every register of the tile (the stores after the loops). */
  guardEach(statement: (t: number, g: number) => string): string {
    return this.each((t, g) => this.guard(t, g, statement(t, g)), "  ");
  }

  /** `let <name><t><g> = ` the vec4 at (row t, group g) of m, a shared [N, cols], a line per row. */
  load(name: string, m: Matrix): string {
    return range(TILE_ROWS).map((t) => {
      const row = this.space.shared(this.row(t));
      return range(TILE_GROUPS).map((g) => `let ${name}${t}${g} = ${m.load(row, this.group(g))};`)
        .join(" ");
    }).join("\n  ");
  }
}

/**
 * The loop over the rank's column groups q of an expand into the tile's acc_t_g (registers named
 * `opts.acc`, "acc" by default): s_t = small[row t] (times the gate g_t when `gated`),
 * acc_t_g[c] += Σ_j s_t[j] · M(j, 4·(c0 + g) + c), where M(j, w) is weight[w, j] ("wide-major",
 * B [W, r]) or weight[j, w] ("rank-major", A [r, W]). Each loaded weight vec4 serves every row of
 * the tile.
 */
export function expandLoop(
  tile: RowTile,
  small: Matrix,
  weight: Matrix,
  layout: "wide-major" | "rank-major",
  opts: { stacked: boolean; gated: boolean; acc?: string },
  indent: string,
): string {
  const wide = tile.cols;
  const acc = opts.acc ?? "acc";
  const rank = small.cols;
  const T = range(TILE_ROWS), G = range(TILE_GROUPS), C = range(4);
  const line = `\n${indent}  `;
  const step = layout === "rank-major"
    ? G.map((g) =>
      C.map((c) => {
        const j = clamp(`4u * q + ${c}u`, rank - 1, rank % 4 !== 0);
        return `let w${g}${c} = ${weight.load(stackRow(j, rank, opts.stacked), tile.group(g))};`;
      }).join(" ") + line +
      T.map((t) => `${acc}${t}${g} += ${C.map((c) => `s${t}.${XYZW[c]} * w${g}${c}`).join(" + ")};`)
        .join(line)
    ).join(line)
    : G.map((g) =>
      C.map((c) => {
        const w = clamp(`4u * (${tile.group(g)}) + ${c}u`, wide - 1, wide % 4 !== 0);
        return `let w${g}${c} = ${weight.load(stackRow(w, wide, opts.stacked), "q")};`;
      }).join(" ") + line +
      T.map((t) => `${acc}${t}${g} += vec4f(${C.map((c) => `dot(s${t}, w${g}${c})`).join(", ")});`)
        .join(line)
    ).join(line);
  const loads = T.map((t) =>
    `let s${t} = ${small.load(tile.space.own(tile.row(t), opts.stacked), "q")}${
      opts.gated ? ` * g${t}` : ""
    };`
  ).join(" ");
  return `for (var q = 0u; q < ${small.groups}u; q++) {${line}${loads}${line}${step}\n${indent}}`;
}

/** acc_g_c_q (wide column 4·(w0 + g) + c, rank group q) of an outer product's tile, zeroed. */
export function outerZeros(rank: number): string {
  const Q = range(rankTile(rank).groups), C = range(4);
  return range(WIDE_TILE).map((g) =>
    C.map((c) => Q.map((q) => `var acc${g}${c}${q} = vec4f(0.0);`).join(" ")).join(" ")
  ).join("\n  ");
}

/**
 * The body of an outer product's loop over rows n: s_q = small[row, j0 + 4q .. +3] (times the
 * gate `g` when `gated`), then for each wide group g, g_g = `bigLoad(column group)` and
 * acc_g_c_q += g_g[c] · s_q. The last wide tile's extra groups are clamped onto the last group.
 */
export function outerStep(
  small: Matrix,
  smallRow: string,
  gated: boolean,
  bigGroups: number,
  bigLoad: (c4: string) => string,
): string {
  const Q = range(rankTile(small.cols).groups), C = range(4);
  const loads = Q.map((q) =>
    `let s${q} = ${small.load(smallRow, `j0 / 4u + ${q}u`)}${gated ? " * g" : ""};`
  ).join(" ");
  const products = range(WIDE_TILE).map((g) =>
    `let g${g} = ${bigLoad(clamp(`w0 + ${g}u`, bigGroups - 1, bigGroups % WIDE_TILE !== 0))};
    ${
      C.map((c) => Q.map((q) => `acc${g}${c}${q} += g${g}.${XYZW[c]} * s${q};`).join(" ")).join(" ")
    }`
  ).join("\n    ");
  return `${loads}\n    ${products}`;
}

/**
 * Writes the tile's acc_g_c_q into the partial at `slot` (a WGSL index of [wide, r] or [r, wide]
 * matrices): "wide-major" stores each acc as is (a row of rank columns), "rank-major" gathers the
 * four wide columns of each rank column j into one vec4.
 */
export function outerStores(
  partial: Matrix,
  layout: "rank-major" | "wide-major",
  wide: number,
  rank: number,
  slot: string,
): string {
  const G = range(WIDE_TILE), C = range(4), Q = range(rankTile(rank).groups);
  return layout === "wide-major"
    ? G.map((g) =>
      C.map((c) =>
        `if (4u * (w0 + ${g}u) + ${c}u < ${wide}u) { ${
          Q.map((q) =>
            partial.store(
              `${slot} * ${wide}u + 4u * (w0 + ${g}u) + ${c}u`,
              `j0 / 4u + ${q}u`,
              `acc${g}${c}${q}`,
            )
          ).join(" ")
        } }`
      ).join("\n  ")
    ).join("\n  ")
    : G.map((g) =>
      Q.map((q) =>
        C.map((cj) =>
          `if (j0 + ${4 * q + cj}u < ${rank}u && w0 + ${g}u < ${Math.ceil(wide / 4)}u) { ${
            partial.store(
              `${slot} * ${rank}u + j0 + ${4 * q + cj}u`,
              `w0 + ${g}u`,
              `vec4f(${C.map((c) => `acc${g}${c}${q}.${XYZW[cj]}`).join(", ")})`,
            )
          } }`
        ).join("\n  ")
      ).join("\n  ")
    ).join("\n  ");
}

/** Invocations of an outer product's partials for `experts` stacked experts (or 1). */
export function outerInvocations(
  space: ExpertRows,
  wide: number,
  rank: number,
  experts: number,
): number {
  return space.tiles(BLOCK_ROWS, experts) * rankTile(rank).tiles *
    Math.ceil(Math.ceil(wide / 4) / WIDE_TILE);
}

/** A generated kernel: its bindings (in the order of its resources) and the WGSL after them. */
export interface KernelSource {
  bindings: readonly Binding[];
  code: string;
}

/** One dispatch of a generated kernel, made for the grid's flat invocation index. */
export function launch(
  engine: Engine,
  label: string,
  source: (index: string) => KernelSource,
  invocations: number,
  resources: readonly Tensor[],
): Command {
  const grid = grid1d(invocations, WORKGROUP);
  const { bindings, code } = source(grid.index);
  const kernel = declareKernel(engine, label, bindings, code);
  return engine.dispatch(label, kernel, resources, grid.workgroups);
}

/** The binding of the gates [N, E] of a gated kernel. */
export const GATE: Binding = ["gate", "read", "array<f32>"];

/** The gate of row `row` (a WGSL expression) and expert `e`, from a [N, E] array<f32>. */
export function gateOf(row: string, experts: number): string {
  return `gate[(${row}) * ${experts}u + e]`;
}

/** `let g<t> = ` the gate of the tile's row t and expert e, for each row of the tile. */
export function gateLoads(tile: RowTile, experts: number): string {
  return range(TILE_ROWS).map((t) =>
    `let g${t} = ${gateOf(tile.space.shared(tile.row(t)), experts)};`
  ).join(" ");
}
