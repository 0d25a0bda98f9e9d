// The rows the mixture's experts run on (kernels/mixture_record.ts records the op over them):
// every expert's N rows, its tensors stacked [E, N, ·] (the dense dispatch,
// kernels/mixture_dense.ts), or only the k·N slots the top-k gate routes, [S, ·] (the sparse
// one, kernels/mixture_sparse.ts). The low-rank kernels (kernels/lowrank.ts) and the mixture's
// backward kernels (kernels/mixture_kernels.ts) walk either kind, given the rows' spec and, when
// routed, the route as their last resource: RowKernels launches them so. The dispatches differ
// beyond that only where a token's experts are summed: dense rows line up with the tokens, so
// the kernels sum over the experts as they go; routed, each per-slot result is brought back to
// its token by a combine of its own (kernels/expert_routes.ts). RowSpace names those steps.
import type { Command } from "../engine/device.ts";
import type { GradTarget, Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import {
  contract,
  type ContractSpec,
  expand,
  type ExpandSpec,
  type LowRank,
  outer,
  type OuterSpec,
} from "./lowrank.ts";
import type { MixtureDims } from "./mixture_kernels.ts";
import type { MixtureMlp } from "./mixture_layers.ts";
import type { RouteLayout } from "./route_layout.ts";
import { type KernelSource, launch } from "./tile_codegen.ts";

/** One mixture op being recorded (kernels/mixture.ts's mixtureMlp has the arguments). */
export interface MixtureOp {
  tape: Tape;
  /** The op's name, the first word of every label. */
  name: string;
  x: Tensor; /*[N, C]*/
  gate: Tensor; /*[N, E]*/
  mlp: MixtureMlp;
  d: MixtureDims;
  scale: number;
}

/** The tensors of a forward step that differs between the dispatches. */
export interface ForwardTensors {
  /** Each branch's frozen product base_k [N, H]. */
  bases: readonly Tensor[];
  /** Each branch's u_k = x·A_kᵀ, per row. */
  us: readonly Tensor[];
  /** Each branch's pre-activation p_k, per row: written here, saved for backward. */
  pres: readonly Tensor[];
  /** m = Σ_j g_j·h_j [N, H]: written here. */
  mix: Tensor;
}

/** The steps of the op that sum over a token's experts, and the kernels that walk the rows. */
export interface RowSpace {
  readonly kernels: RowKernels;
  /** Forward's first commands, before anything walks the rows (routed: the route's). */
  readonly setup: readonly Command[];
  /** The shape of one column tile's dgate partials (mixBackwardWgsl): [N, E] or [S]. */
  readonly gateRows: readonly number[];
  /** Each branch's p_k = base_k + s·u_k·B_kᵀ (saved) and the mix m = Σ_j g_j·act(p_1j, ..). */
  preActivationsAndMix(t: ForwardTensors): Command[];
  /** y [N, C], holding m·W_o, += Σ_j g_j·(b_o + s·u_oj·B_ojᵀ). */
  addOutDelta(uo: Tensor, y: Tensor): Command[];
  /**
   * Σ_j dp_kj [N, H] of one branch into `sum` (for dx's frozen product), labelled `label`; null
   * where the backward kernel sums it as it writes dp_kj (MixBackwardOutputs.sums).
   */
  readonly sumBranch: ((label: string, dp: Tensor, sum: Tensor) => Command) | null;
  /** dx [N, C] += Σ_k Σ_j v_kj·A_kj, each branch's v_kj per row. */
  addDxLowRank(vs: readonly Tensor[], dx: Tensor): Command[];
}

/**
 * The kernels of one op that walk its experts' rows, labelled `name label`: the low-rank
 * products with the rows' spec, and the mixture's own kernels; routed, each label ends in
 * "(routed)" and the route is each kernel's last resource.
 */
export class RowKernels {
  readonly spec: LowRank;
  /**
   * `shape`: the leading shape of a tensor with a row per expert row, [E, N] or [S]; `routes`
   * and `route` (the layout and its tensor) where the rows are the routed slots.
   */
  constructor(
    readonly op: MixtureOp,
    readonly shape: readonly number[],
    readonly routes?: RouteLayout,
    private readonly route?: Tensor,
  ) {
    const { rows, rank, experts } = op.d;
    this.spec = routes
      ? { rows, rank, experts, stacked: true, routes }
      : { rows, rank, experts, stacked: true };
  }

  /** [...shape, width]: a row of `width` per expert row, labelled `name what(x)`. */
  tensor(what: string, width: number): Tensor {
    const { tape, name, x } = this.op;
    return tape.tensor([...this.shape, width], `${name} ${what}(${x.label})`);
  }

  /** `name label`, and " (routed)" where the rows are. */
  label(label: string): string {
    return `${this.op.name} ${label}${this.routes ? " (routed)" : ""}`;
  }

  /** `resources`, and the route where the rows are routed. */
  resources(resources: readonly Tensor[]): Tensor[] {
    return this.route ? [...resources, this.route] : [...resources];
  }

  contract(label: string, spec: Omit<ContractSpec, keyof LowRank>, on: Tensor[]): Command {
    const { engine } = this.op.tape;
    return contract(engine, this.label(label), { ...this.spec, ...spec }, this.resources(on));
  }

  expand(label: string, spec: Omit<ExpandSpec, keyof LowRank>, on: Tensor[]): Command {
    const { engine } = this.op.tape;
    return expand(engine, this.label(label), { ...this.spec, ...spec }, this.resources(on));
  }

  /** target (+)= sumScale·Σ over each expert's rows of big[row]ᵀ ⊗ (g·)small[row]. */
  outer(
    label: string,
    layout: OuterSpec["layout"],
    spec: Omit<OuterSpec, keyof LowRank | "layout">,
    [big, small]: [Tensor[], Tensor],
    sumScale: number,
    target: GradTarget,
  ): Command[] {
    const { tape, gate } = this.op;
    return outer(
      tape,
      this.label(label),
      { ...this.spec, ...spec, layout },
      { big, small, gate, route: this.route },
      sumScale,
      target,
    );
  }

  /** One dispatch of a mixture kernel (kernels/mixture_kernels.ts) over `resources`. */
  launch(
    label: string,
    source: (index: string) => KernelSource,
    invocations: number,
    resources: readonly Tensor[],
  ): Command {
    const { engine } = this.op.tape;
    return launch(engine, this.label(label), source, invocations, this.resources(resources));
  }
}
