// Running a forward-only graph over every token of a stream, in the windows of held-out
// evaluation (method.md §5: consecutive non-overlapping windows of the context length, the last
// one padded), and keeping chosen tensors' rows for the real input positions.
import type { BatchProgress } from "./progress.ts";
import { roundUp, viewAlignment } from "../kernels/chunks.ts";
import type { Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { BaseConfig } from "./base.ts";
import { TokenBatch } from "./batch.ts";
import { evalBatches, type EvalWindow, evalWindows } from "./pretrain_data.ts";

/**
 * Built once (the graph is recorded under noGrad, the buffers allocated), then `capture()` any
 * number of times, e.g. once per evaluation round. Every batch is submitted back to back, each
 * copying the recorded tensors into its own slots of one buffer that is read once at the end.
 */
export class StreamCapture {
  readonly #batch: TokenBatch;
  readonly #tape: Tape;
  readonly #forward: ReturnType<Tape["forward"]>;
  readonly #tensors: Tensor[];
  readonly #widths: number[];
  readonly #batches: EvalWindow[][];
  readonly #offsets: number[];
  readonly #stride: number;
  readonly #slots: Tensor | null;
  /** Per batch, per recorded tensor: the view of the slot its values are copied into. */
  readonly #slotViews: Tensor[][];

  constructor(
    readonly engine: Engine,
    config: BaseConfig,
    stream: Uint32Array,
    readonly B: number,
    readonly T: number,
    /** Records the forward pass of a batch; returns tensors of B·T rows each ([B·T] or [B·T, width]). */
    record: (tape: Tape, batch: TokenBatch) => Tensor[],
  ) {
    this.#batch = new TokenBatch(engine, config, B, T);
    this.#tape = new Tape(engine);
    try {
      this.#tensors = this.#tape.noGrad(() => record(this.#tape, this.#batch));
      this.#widths = this.#tensors.map((t) => {
        if (t.shape[0] !== B * T || t.shape.length > 2) {
          throw new ShapeError(`StreamCapture: ${t} is not [${B * T}] or [${B * T}, width]`);
        }
        return t.shape[1] ?? 1;
      });
      this.#forward = this.#tape.forward();
      this.#batches = evalBatches(evalWindows(stream, T, 0), B, T);
      // Slots start at offsets a view may take (the storage alignment, in floats).
      this.#offsets = [];
      let stride = 0;
      for (const t of this.#tensors) {
        this.#offsets.push(stride);
        stride += roundUp(t.size, viewAlignment(engine));
      }
      this.#stride = stride;
      this.#slots = this.#batches.length === 0 || stride === 0
        ? null
        : engine.tensor([this.#batches.length * stride], { label: "captured tensors" });
      this.#slotViews = this.#batches.map((_, i) =>
        this.#tensors.map((t, k) =>
          engine.view(this.#slots!, i * stride + this.#offsets[k], t.shape, `${t.label} ${i}`)
        )
      );
    } catch (e) {
      // A refused shape or a slot buffer over the adapter's limits: free what was built.
      this.dispose();
      throw e;
    }
  }

  /** How many windows of T (the last one partial) the stream is read in. */
  get windows(): number {
    return this.#batches.reduce((n, windows) => n + windows.length, 0);
  }

  /** How many input positions the stream has (its length − 1): the rows `capture` returns. */
  get positions(): number {
    return this.#batches.flat().reduce((sum, w) => sum + w.targets, 0);
  }

  /**
   * Per recorded tensor, the rows of input positions 0..length−2 in order: [positions, width].
   * `onBatch` (optional) hears of every batch once the GPU has finished it.
   */
  async capture(onBatch?: BatchProgress): Promise<Float32Array[]> {
    const out = this.#widths.map((width) => new Float32Array(this.positions * width));
    if (this.#slots === null) return out;
    const windowsTotal = this.windows;
    let windowsDone = 0, tokens = 0;
    for (const [i, windows] of this.#batches.entries()) {
      this.#batch.set(windows.map((w) => w.ids));
      await this.engine.run([
        ...this.#forward,
        ...this.#tensors.map((src, k) => ({
          kind: "copy" as const,
          label: `keep ${src.label}`,
          src,
          dst: this.#slotViews[i][k],
        })),
      ], "stream capture");
      if (onBatch) {
        await this.engine.sync();
        windowsDone += windows.length;
        tokens += windows.reduce((n, w) => n + w.targets, 0);
        onBatch(windowsDone, windowsTotal, tokens);
      }
    }
    const data = await this.engine.readF32(this.#slots);
    this.#widths.forEach((width, k) => {
      let p = 0;
      this.#batches.forEach((windows, i) => {
        windows.forEach((w, b) => {
          const start = i * this.#stride + this.#offsets[k] + b * this.T * width;
          out[k].set(data.subarray(start, start + w.targets * width), p * width);
          p += w.targets;
        });
      });
    });
    return out;
  }

  dispose(): void {
    this.#slots?.dispose();
    this.#tape.dispose();
    this.#batch.dispose();
  }
}
