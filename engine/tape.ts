// The autograd tape. Ops are recorded in execution (topological) order, each declaring its
// inputs, outputs, forward commands and a builder for its backward commands. `backward` walks
// the tape once in reverse and builds the whole backward pass as a command list that can be
// replayed every step. Gradients of tensors that do not require them are never computed.
//
// Gradient buffers: a leaf tensor's `grad` always accumulates (zeroing is explicit, via
// `zeroGrad`). An intermediate tensor's gradient is *assigned* by the first backward op that
// reaches it (in reverse order) and accumulated by the others, so no zeroing pass is needed.
import type { Command, Engine } from "./device.ts";
import { ShapeError } from "./errors.ts";
import type { Tensor } from "./tensor.ts";

/** Where a backward op writes an input's gradient, and whether it adds to what is there. */
export interface GradTarget {
  tensor: Tensor;
  accumulate: boolean;
}

export interface BackwardContext {
  /** Gradient of the loss with respect to output i (always populated). */
  gradOutput(i: number): Tensor;
  /** True when output i is the loss itself and its gradient is the constant 1. */
  gradOutputIsUnit(i: number): boolean;
  /** Where to write the gradient of input i, or null when input i needs none. */
  gradInput(i: number): GradTarget | null;
}

export interface OpDecl {
  name: string;
  /** Tensors the op reads that gradients may flow to, in the order `gradInput` indexes them. */
  inputs: readonly Tensor[];
  outputs: readonly Tensor[];
  forward: readonly Command[];
  /** Builds the backward commands; absent for ops that are not differentiable. */
  backward?: (ctx: BackwardContext) => Command[];
}

interface RecordedOp extends OpDecl {
  tracked: boolean;
}

export class Tape {
  #ops: RecordedOp[] = [];
  #owned: Tensor[] = [];
  #produced = new Set<Tensor>();
  #gradEnabled = true;

  constructor(readonly engine: Engine) {}

  /** A tensor owned by the tape (op outputs, saved activations), freed by `dispose`. */
  tensor(shape: readonly number[], label: string, dtype: "f32" | "u32" = "f32"): Tensor {
    const tensor = this.engine.tensor(shape, { label, dtype });
    this.#owned.push(tensor);
    return tensor;
  }

  /** Records an op. Its outputs require gradients when any input does (outside `noGrad`). */
  record(op: OpDecl): void {
    for (const t of [...op.inputs, ...op.outputs]) t.assertLive();
    const tracked = this.#gradEnabled && op.backward !== undefined &&
      op.inputs.some((t) => t.requiresGrad);
    for (const out of op.outputs) {
      if (this.#produced.has(out)) throw new Error(`${op.name}: ${out} is already an op output`);
      this.#produced.add(out);
      out.requiresGrad = tracked;
    }
    this.#ops.push({ ...op, tracked });
  }

  /** Runs `fn` with gradient tracking off: ops recorded inside get no backward. */
  noGrad<T>(fn: () => T): T {
    const previous = this.#gradEnabled;
    this.#gradEnabled = false;
    try {
      return fn();
    } finally {
      this.#gradEnabled = previous;
    }
  }

  /** The forward pass: every recorded op's forward commands, in order. */
  forward(): Command[] {
    return this.#ops.flatMap((op) => op.forward);
  }

  /**
   * Builds the backward pass from `output`. Without `upstream`, `output` must hold one value
   * and its gradient is 1; otherwise `upstream` (same shape) is the gradient flowing into it.
   * Returns commands to run after the forward pass; leaf gradients accumulate into `.grad`.
   */
  backward(output: Tensor, upstream?: Tensor): Command[] {
    const engine = this.engine;
    if (!output.requiresGrad) {
      throw new Error(`backward from ${output}: it does not depend on any tensor requiring grad`);
    }
    let seed: Tensor;
    if (upstream) {
      if (upstream.size !== output.size) {
        throw new ShapeError(`backward: upstream ${upstream} does not match ${output}`);
      }
      seed = upstream;
    } else {
      if (output.size !== 1) {
        throw new ShapeError(`backward from ${output} needs an upstream gradient (not a scalar)`);
      }
      seed = this.tensor([1], `grad ${output.label}`);
      engine.write(seed, [1]);
    }
    const grads = new Map<Tensor, Tensor>([[output, seed]]);
    const commands: Command[] = [];
    for (let o = this.#ops.length - 1; o >= 0; o--) {
      const op = this.#ops[o];
      if (!op.tracked || !op.backward || !op.outputs.some((t) => grads.has(t))) continue;
      for (const out of op.outputs) {
        if (grads.has(out)) continue;
        const zero = this.tensor(out.shape, `grad ${out.label}`);
        commands.push({ kind: "clear", label: `zero grad ${out.label}`, tensor: zero });
        grads.set(out, zero);
      }
      const targets = op.inputs.map((input, i): GradTarget | null => {
        if (!input.requiresGrad) return null;
        const repeated = op.inputs.indexOf(input) !== i ||
          op.inputs.lastIndexOf(input) !== i;
        if (!this.#produced.has(input)) {
          input.grad ??= engine.tensor(input.shape, { label: `grad ${input.label}` });
          return { tensor: input.grad, accumulate: true };
        }
        const existing = grads.get(input);
        if (existing) return { tensor: existing, accumulate: true };
        const fresh = this.tensor(input.shape, `grad ${input.label}`);
        grads.set(input, fresh);
        if (repeated) {
          commands.push({ kind: "clear", label: `zero grad ${input.label}`, tensor: fresh });
          return { tensor: fresh, accumulate: true };
        }
        return { tensor: fresh, accumulate: false };
      });
      commands.push(...op.backward({
        gradOutput: (i) => grads.get(op.outputs[i])!,
        gradOutputIsUnit: (i) => !upstream && op.outputs[i] === output,
        gradInput: (i) => targets[i],
      }));
    }
    return commands;
  }

  /** Frees every tensor the tape owns (activations, saved tensors, intermediate gradients). */
  dispose(): void {
    for (const t of this.#owned) t.dispose();
    this.#owned = [];
    this.#ops = [];
    this.#produced.clear();
  }
}

/** Commands that zero the gradients of `params` (those that have one). */
export function zeroGrad(params: readonly Tensor[]): Command[] {
  return params.filter((p) => p.grad).map((p) => ({
    kind: "clear" as const,
    label: `zero grad ${p.label}`,
    tensor: p.grad!,
  }));
}
