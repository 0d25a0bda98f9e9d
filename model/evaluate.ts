// Held-out evaluation: the mean cross-entropy over every target of a stream.
import type { Engine } from "../engine/device.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { BaseConfig } from "./base.ts";
import type { TokenBatch } from "./batch.ts";
import type { BatchProgress } from "./progress.ts";
import { StreamCapture } from "./stream_capture.ts";

/** Built once, then `meanLoss()` once per evaluation: a StreamCapture of the per-token losses. */
export class StreamEvaluator {
  readonly #capture: StreamCapture;

  constructor(
    engine: Engine,
    config: BaseConfig,
    stream: Uint32Array,
    B: number,
    T: number,
    /** Records the forward pass of a batch and returns its per-token losses [B·T]. */
    tokenLosses: (tape: Tape, batch: TokenBatch) => Tensor,
  ) {
    this.#capture = new StreamCapture(
      engine,
      config,
      stream,
      B,
      T,
      (tape, batch) => [tokenLosses(tape, batch)],
    );
  }

  /** How many windows an evaluation reads. */
  get windows(): number {
    return this.#capture.windows;
  }

  /** The mean loss over every target; `onBatch` hears of each batch as it is done. */
  async meanLoss(onBatch?: BatchProgress): Promise<number> {
    const [losses] = await this.#capture.capture(onBatch);
    let sum = 0;
    for (const loss of losses) sum += loss;
    return sum / losses.length;
  }

  dispose(): void {
    this.#capture.dispose();
  }
}
