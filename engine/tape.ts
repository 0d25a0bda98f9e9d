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
  #textures: GPUTexture[] = [];
  #produced = new Set<Tensor>();
  /** Reshaped views → the tensor they alias; gradients are kept per aliased tensor. */
  #aliasOf = new Map<Tensor, Tensor>();
  #gradEnabled = true;

  constructor(readonly engine: Engine) {}

  /** A tensor owned by the tape (op outputs, saved activations), freed by `dispose`. */
  tensor(shape: readonly number[], label: string, dtype: "f32" | "u32" = "f32"): Tensor {
    const tensor = this.engine.tensor(shape, { label, dtype });
    this.#owned.push(tensor);
    return tensor;
  }

  /** An rgba32float storage texture owned by the tape (saved operands), freed by `dispose`. */
  texture(width: number, height: number, label: string): GPUTexture {
    const texture = this.engine.texture(width, height, label);
    this.#textures.push(texture);
    return texture;
  }

  /**
   * `x` seen with another shape of the same size: no copy, no dispatch. The view shares x's
   * buffer, and gradients flowing into the view land in x's gradient.
   */
  reshape(x: Tensor, shape: readonly number[]): Tensor {
    const view = this.engine.view(x, 0, shape, x.label);
    if (view.size !== x.size) {
      throw new ShapeError(`reshape ${x} to [${shape}]: sizes differ`);
    }
    view.requiresGrad = x.requiresGrad;
    this.#aliasOf.set(view, this.#root(x));
    return view;
  }

  #root(t: Tensor): Tensor {
    return this.#aliasOf.get(t) ?? t;
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
    // Keyed by aliased tensor (see `reshape`); `shaped` hands each op its own view's shape.
    const grads = new Map<Tensor, Tensor>([[this.#root(output), seed]]);
    const shaped = (grad: Tensor, like: Tensor) =>
      grad.shape.join() === like.shape.join() ? grad : engine.view(grad, 0, like.shape);
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
      const roots = op.inputs.map((input) => this.#root(input));
      const targets = op.inputs.map((input, i): GradTarget | null => {
        if (!input.requiresGrad) return null;
        const root = roots[i];
        const repeated = roots.indexOf(root) !== i || roots.lastIndexOf(root) !== i;
        if (!this.#produced.has(root)) {
          root.grad ??= engine.tensor(root.shape, { label: `grad ${root.label}` });
          return { tensor: shaped(root.grad, input), accumulate: true };
        }
        const existing = grads.get(root);
        if (existing) return { tensor: shaped(existing, input), accumulate: true };
        const fresh = this.tensor(root.shape, `grad ${root.label}`);
        grads.set(root, fresh);
        if (repeated) {
          commands.push({ kind: "clear", label: `zero grad ${root.label}`, tensor: fresh });
          return { tensor: shaped(fresh, input), accumulate: true };
        }
        return { tensor: shaped(fresh, input), accumulate: false };
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
    for (const texture of this.#textures) this.engine.releaseTexture(texture);
    this.#textures = [];
    this.#ops = [];
    this.#produced.clear();
    this.#aliasOf.clear();
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
