// What the low-rank kernels (kernels/lowrank.ts) and the mixture's elementwise kernels
// (kernels/mixture.ts) compute of the tensors they read, element by element: the values as
// stored (plain LoRA, and every gradient), GPT-2's gelu_tanh of a saved pre-activation, or
// Llama's silu(gate) ⊙ up of a saved pair. The mixture saves the pre-activations and each
// consumer recomputes h on load: compute (cheap here) instead of another [E, N, H] tensor to write
// and read. The WGSL of each function comes from its op's file (gelu.ts, swiglu.ts), written once.
import { geluWgsl } from "./gelu.ts";
import { siluWgsl } from "./swiglu.ts";
import { Matrix } from "./tile_codegen.ts";

export interface Activation {
  /** How many stored tensors of one shape it reads (one binding each). */
  inputs: number;
  /** Module-scope WGSL on vec4f. */
  prelude: string;
  /** h as a WGSL expression of the inputs' vec4s at one place. */
  value(x: readonly string[]): string;
}

/** The gradients of an activation, for the mixture's backward. */
export interface MixtureActivation extends Activation {
  /**
   * At one place, with register names suffixed `id`: WGSL statements, then h and the gradient
   * of each input given dh = ∂loss/∂h (WGSL expressions).
   */
  backward(x: readonly string[], dh: string, id: string): {
    setup: string;
    h: string;
    grads: readonly string[];
  };
}

/** The values as stored. */
export const IDENTITY: Activation = { inputs: 1, prelude: "", value: ([v]) => v };

/** gelu_tanh(pre) (GPT-2's MLP); backward h and gelu' from one exp. */
export const GELU: MixtureActivation = {
  inputs: 1,
  prelude: geluWgsl("vec4f", true),
  value: ([pre]) => `gelu(${pre})`,
  backward: ([pre], dh, id) => ({
    setup: `let act${id} = gelu_and_slope(${pre});`,
    h: `act${id}[0]`,
    grads: [`${dh} * act${id}[1]`],
  }),
};

/** silu(gate) ⊙ up (Llama's MLP); backward silu and silu' from one exp. */
export const SWIGLU: MixtureActivation = {
  inputs: 2,
  prelude: siluWgsl("vec4f"),
  value: ([gate, up]) => `silu(${gate}) * ${up}`,
  backward: ([gate, up], dh, id) => ({
    setup: `let act${id} = silu_and_slope(${gate});`,
    h: `act${id}[0] * ${up}`,
    grads: [`${dh} * ${up} * act${id}[1]`, `${dh} * act${id}[0]`],
  }),
};

/** The matrices `activation` reads, [rows, cols] each: `name`, then `name_1`, ... */
export function activationInputs(
  activation: Activation,
  name: string,
  cols: number,
  access: "read" | "rw" = "read",
): Matrix[] {
  return Array.from(
    { length: activation.inputs },
    (_, k) => new Matrix(k === 0 ? name : `${name}_${k}`, cols, access),
  );
}
