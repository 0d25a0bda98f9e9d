// Evaluation over every token of a stream (method.md §5: consecutive non-overlapping windows of
// the context length, the last one padded and counted only over its real targets).
import type { Engine } from "../engine/device.ts";
import { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { GPT2Config } from "./config.ts";
import { GPT2Batch } from "./gpt2.ts";
import { evalBatches, type EvalWindow, evalWindows } from "./pretrain_data.ts";

/**
 * Mean cross-entropy over every target of the held-out stream, from a forward-only graph
 * (built once under noGrad). All batches are submitted back to back, each copying its
 * per-token losses into its own slot of one buffer that is read once at the end.
 */
export class StreamEvaluator {
  readonly #batch: GPT2Batch;
  readonly #tape: Tape;
  readonly #forward: ReturnType<Tape["forward"]>;
  readonly #tokenLosses: Tensor;
  readonly #batches: EvalWindow[][];
  readonly #slots: Tensor;
  readonly #slotViews: Tensor[];
  readonly #stride: number;

  constructor(
    readonly engine: Engine,
    config: GPT2Config,
    stream: Uint32Array,
    readonly B: number,
    readonly T: number,
    /** Records the forward pass of a batch and returns its per-token losses [B·T]. */
    tokenLosses: (tape: Tape, batch: GPT2Batch) => Tensor,
  ) {
    this.#batch = new GPT2Batch(engine, config, B, T);
    this.#tape = new Tape(engine);
    this.#tokenLosses = this.#tape.noGrad(() => tokenLosses(this.#tape, this.#batch));
    this.#forward = this.#tape.forward();
    this.#batches = evalBatches(evalWindows(stream, T, 0), B, T);
    // Slots start at multiples of 8 floats: views need 32-byte aligned offsets.
    this.#stride = Math.ceil((B * T) / 8) * 8;
    this.#slots = engine.tensor([this.#batches.length * this.#stride], {
      label: "held-out losses",
    });
    this.#slotViews = this.#batches.map((_, i) =>
      engine.view(this.#slots, i * this.#stride, [B * T], `held-out losses ${i}`)
    );
  }

  /** How many targets (tokens) the stream has: the denominator of the mean. */
  get targets(): number {
    return this.#batches.flat().reduce((sum, w) => sum + w.targets, 0);
  }

  async meanLoss(): Promise<number> {
    for (const [i, windows] of this.#batches.entries()) {
      this.#batch.set(windows.map((w) => w.ids));
      await this.engine.run([
        ...this.#forward,
        {
          kind: "copy",
          label: "keep held-out losses",
          src: this.#tokenLosses,
          dst: this.#slotViews[i],
        },
      ], "held-out evaluation");
    }
    const losses = await this.engine.readF32(this.#slots);
    let sum = 0, count = 0;
    this.#batches.forEach((windows, i) => {
      windows.forEach((window, b) => {
        const row = i * this.#stride + b * this.T;
        for (let t = 0; t < window.targets; t++) sum += losses[row + t];
        count += window.targets;
      });
    });
    return sum / count;
  }

  dispose(): void {
    this.#slots.dispose();
    this.#tape.dispose();
    this.#batch.dispose();
  }
}
