// The mixture of LoRA experts (kernels/mixture.ts) as its two dispatches see it, dense
// (kernels/mixture_dense.ts) and sparse (kernels/mixture_sparse.ts): the frozen MLP's layers with
// the experts' LoRA on them, the options, the frozen products both run once whatever E is, and
// the refusal of tensors the mixture's own kernels could not bind whole.
import type { Command, Engine } from "../engine/device.ts";
import { LimitError } from "../engine/errors.ts";
import type { GradTarget } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { MixtureActivation } from "./activation.ts";
import { productCommands } from "./matmul.ts";
import { type Operand, product } from "./matmul_plan.ts";
import type { MixtureDims } from "./mixture_kernels.ts";
import type { KernelVariant } from "./variant.ts";

/** One frozen linear layer of the MLP, and the experts' LoRA on it. */
export interface MixtureLayer {
  /** Its name in labels (f, p; gate, up, down). */
  name: string;
  /** The frozen weight: [in, out], or [out, in] when `outIn` (applied as x·Wᵀ). */
  weight: Tensor;
  outIn: boolean;
  /** The frozen bias [out], or null. */
  bias: Tensor | null;
  /** The experts' lora_A [E, r, in] and lora_B [E, out, r]. */
  a: Tensor;
  b: Tensor;
}

export interface MixtureMlp {
  /** The first layer's branches, one per input of the activation, in its order. */
  branches: readonly MixtureLayer[];
  activation: MixtureActivation;
  /** The second layer, applied to h. */
  out: MixtureLayer;
}

/**
 * How the experts are dispatched: `dense` runs every expert on every token (an unselected one
 * weighted by its gate 0); `sparse` runs each token through the experts its gate selects only,
 * which needs a gate made by kernels/topk_gate.ts (at most k nonzero entries per row); `auto`
 * (the default) takes sparse where it is faster (kernels/mixture.ts says where).
 */
export type MixtureDispatch = "auto" | "dense" | "sparse";

export interface MixtureOptions {
  /** Kernel family of the frozen products; the engine's (kernels/variant.ts) by default. */
  variant?: KernelVariant;
  /** Split and refuse as if a binding could hold at most this many bytes (tests of the limit). */
  maxBindingBytes?: number;
  /** Split as if a shader stage could bind at most this many storage buffers (tests of it). */
  maxStorageBuffers?: number;
  dispatch?: MixtureDispatch;
}

/** A stored [rows, cols] tensor as a matmul operand, used as stored. */
export function rowsOf(tensor: Tensor, rows: number, cols: number): Operand {
  return { tensor, rows, cols, trans: false, batched: false };
}

/** A layer's frozen weight as the right operand of x·W (or, `transposed`, of d·Wᵀ). */
export function frozenOperand(layer: MixtureLayer, transposed: boolean): Operand {
  const [rows, cols] = layer.weight.shape;
  return { tensor: layer.weight, rows, cols, trans: layer.outIn !== transposed, batched: false };
}

/** An unbatched product through kernels/matmul.ts (the frozen MLP's work), labelled `name label`. */
export type FrozenProduct = (
  label: string,
  a: Operand,
  b: Operand,
  target: GradTarget,
  bias?: Tensor | null,
) => Command[];

export function frozenProduct(
  engine: Engine,
  name: string,
  variant: KernelVariant,
  maxBindingBytes: number,
): FrozenProduct {
  return (label, a, b, target, bias = null) =>
    productCommands(
      engine,
      product(`${name} ${label}`, a, b, 1, false, target, bias),
      variant,
      maxBindingBytes,
    );
}

/**
 * The mixture's own kernels bind the saved pre-activations ([savedRows, H] per branch: E·N
 * dense, k·N sparse) and the [N, C] rows whole: one that cannot be bound is refused here, before
 * anything is recorded, with the rows that fit.
 */
export function checkBindings(
  name: string,
  mlp: MixtureMlp,
  d: MixtureDims,
  savedShape: readonly number[],
  maxBindingBytes: number,
): void {
  const { rows, embd } = d;
  const saved = mlp.branches.map((l) => `p_${l.name}`).join(", ");
  const whole: [string, readonly number[]][] = [
    [`the experts' saved pre-activations ${saved}`, [...savedShape, d.hidden]],
    ["x and y", [rows, embd]],
  ];
  for (const [what, shape] of whole) {
    const bytes = 4 * shape.reduce((a, b) => a * b, 1);
    if (bytes <= maxBindingBytes) continue;
    const fit = Math.floor(maxBindingBytes / (bytes / rows));
    throw new LimitError(
      `${name}: ${what} [${shape}] take ${bytes} bytes, over the ${maxBindingBytes} bytes one ` +
        `storage binding may hold; run at most ${fit} rows (tokens) per call, ${rows} given`,
    );
  }
}
