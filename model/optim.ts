// AdamW with torch.optim.AdamW's semantics. The update commands (one fused kernel per parameter
// tensor) are built once; `step(lr)` counts the step, writes the step's hyperparameters into the
// uniforms and returns those same commands to put into the step's single submit:
//
//   const opt = new AdamW(engine, params, { lr: 2e-3, betas: [0.9, 0.95], weightDecay: 0.01 });
//   await engine.run([...opt.zeroGrad(), ...forward, ...backward, ...opt.step(lrAt(step))]);
//
// queue.writeBuffer is ordered before every later submit, so the uniform written by `step` is
// what that run sees, and runs already submitted keep the values they were submitted with.
import { ADAMW_UNIFORM_BYTES, adamwCommands, adamwUniformValues } from "../kernels/adamw.ts";
import type { Command, Engine, Uniform } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import { zeroGrad } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";

export interface AdamWOptions {
  /** Learning rate until `step(lr)` gives another (default 1e-3). */
  lr?: number;
  /** β1, β2 (default [0.9, 0.999]). */
  betas?: readonly [number, number];
  /** Added to √v̂ (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay for parameters without a group value (default 0.01, as PyTorch). */
  weightDecay?: number;
  /** Parameters for which this returns false get no weight decay (e.g. biases and LayerNorm). */
  decay?: (param: Tensor) => boolean;
}

/** Parameters sharing a weight decay, as a PyTorch parameter group. */
export interface ParamGroup {
  params: readonly Tensor[];
  weightDecay?: number;
}

/** The optimiser's state, for checkpoints: moments in the order of `AdamW.params`. */
export interface AdamWState {
  step: number;
  m: Float32Array[];
  v: Float32Array[];
}

interface ParamSlot {
  param: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  weightDecay: number;
}

export class AdamW {
  /** The parameters updated, in the order of the state's moments. */
  readonly params: readonly Tensor[];
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  #step = 0;
  #slots: ParamSlot[];
  /** One uniform per distinct weight decay: 1 − lr·wd is folded into it. */
  #uniforms = new Map<number, Uniform>();
  #commands: Command[];
  #disposed = false;

  /**
   * Creates the moments (zero) and the update commands. Each parameter must require gradients;
   * its `grad` tensor is created here when absent (the tape's backward then accumulates into
   * it), and must stay the same tensor for the optimiser's lifetime.
   */
  constructor(
    readonly engine: Engine,
    params: readonly Tensor[] | readonly ParamGroup[],
    opts: AdamWOptions = {},
  ) {
    this.lr = checkLr(opts.lr ?? 1e-3);
    [this.beta1, this.beta2] = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    for (const beta of [this.beta1, this.beta2]) {
      if (!(beta >= 0 && beta < 1)) throw new RangeError(`AdamW: beta ${beta} is not in [0, 1)`);
    }
    if (!(this.eps >= 0)) throw new RangeError(`AdamW: eps ${this.eps} is negative`);
    const defaultDecay = opts.weightDecay ?? 0.01;
    const groups: readonly ParamGroup[] = params.every((p) => "params" in p)
      ? params as readonly ParamGroup[]
      : [{ params: params as readonly Tensor[] }];
    const seen = new Set<Tensor>();
    this.#slots = groups.flatMap((group) =>
      group.params.map((param): ParamSlot => {
        param.assertLive();
        if (seen.has(param)) throw new Error(`AdamW: ${param} is listed twice`);
        seen.add(param);
        if (param.dtype !== "f32") throw new ShapeError(`AdamW: ${param} is not f32`);
        if (!param.requiresGrad) {
          throw new Error(`AdamW: ${param} does not require grad (frozen parameters stay out)`);
        }
        param.grad ??= engine.tensor(param.shape, { label: `grad ${param.label}` });
        const weightDecay = opts.decay?.(param) === false ? 0 : group.weightDecay ?? defaultDecay;
        if (!(weightDecay >= 0)) throw new RangeError(`AdamW: weight decay ${weightDecay}`);
        return {
          param,
          grad: param.grad,
          m: engine.tensor(param.shape, { label: `adam m ${param.label}` }),
          v: engine.tensor(param.shape, { label: `adam v ${param.label}` }),
          weightDecay,
        };
      })
    );
    this.params = this.#slots.map((s) => s.param);
    this.#commands = this.#slots.flatMap((slot) => {
      let uniform = this.#uniforms.get(slot.weightDecay);
      if (!uniform) {
        uniform = engine.uniform(ADAMW_UNIFORM_BYTES, `adamw wd=${slot.weightDecay}`);
        this.#uniforms.set(slot.weightDecay, uniform);
      }
      return adamwCommands(engine, { p: slot.param, g: slot.grad, m: slot.m, v: slot.v }, uniform);
    });
  }

  /** Steps taken so far (t of the last step). */
  get stepCount(): number {
    return this.#step;
  }

  /** Bytes of GPU memory the optimiser holds (moments and uniforms). */
  get byteLength(): number {
    const moments = this.#slots.reduce((sum, s) => sum + s.m.byteLength + s.v.byteLength, 0);
    return moments + this.#uniforms.size * ADAMW_UNIFORM_BYTES;
  }

  /**
   * Prepares step t + 1 with learning rate `lr` (default: the last one): writes the uniforms and
   * returns the update commands (the same list every step) for the step's submit. Call it once
   * per submitted step, after the gradients are complete in the command order.
   */
  step(lr = this.lr): readonly Command[] {
    this.#assertUsable();
    this.lr = checkLr(lr);
    this.#step++;
    for (const [weightDecay, uniform] of this.#uniforms) {
      const hyper = { lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, weightDecay };
      uniform.write(adamwUniformValues(hyper, this.#step));
    }
    return this.#commands;
  }

  /** Commands zeroing the parameters' gradients. */
  zeroGrad(): Command[] {
    this.#assertUsable();
    return zeroGrad(this.params);
  }

  /** Reads the moments back (waits for submitted work). */
  async exportState(): Promise<AdamWState> {
    this.#assertUsable();
    const m: Float32Array[] = [], v: Float32Array[] = [];
    for (const slot of this.#slots) {
      m.push(await this.engine.readF32(slot.m));
      v.push(await this.engine.readF32(slot.v));
    }
    return { step: this.#step, m, v };
  }

  /** Restores moments and step count saved by `exportState` for the same parameters. */
  importState(state: AdamWState): void {
    this.#assertUsable();
    const n = this.#slots.length;
    if (state.m.length !== n || state.v.length !== n) {
      throw new ShapeError(
        `AdamW.importState: ${state.m.length} m and ${state.v.length} v tensors for ${n} params`,
      );
    }
    if (!Number.isInteger(state.step) || state.step < 0) {
      throw new RangeError(`AdamW.importState: step ${state.step} is not a count`);
    }
    this.#slots.forEach((slot, i) => {
      this.engine.write(slot.m, state.m[i]);
      this.engine.write(slot.v, state.v[i]);
    });
    this.#step = state.step;
  }

  /** Frees the moments and uniforms (not the parameters or their gradients). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const slot of this.#slots) {
      slot.m.dispose();
      slot.v.dispose();
    }
    for (const uniform of this.#uniforms.values()) this.engine.releaseUniform(uniform);
    this.#uniforms.clear();
    this.#commands = [];
  }

  #assertUsable(): void {
    if (this.#disposed) throw new Error("AdamW used after dispose");
    for (const slot of this.#slots) {
      if (slot.param.disposed || slot.param.grad !== slot.grad) {
        throw new Error(
          `AdamW: ${slot.param} or its gradient was disposed or replaced after the optimiser ` +
            `was built; build a new optimiser`,
        );
      }
    }
  }
}

function checkLr(lr: number): number {
  if (!(lr >= 0 && Number.isFinite(lr))) throw new RangeError(`AdamW: learning rate ${lr}`);
  return lr;
}
