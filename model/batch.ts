// The token ids of one training or evaluation step, for a base model of any family: B sequences
// of T+1 ids give the inputs and the next-token targets (positions 0..T−1 for learned position
// embeddings; rotary ones need none).
import type { Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tensor } from "../engine/tensor.ts";
import { checkTargets } from "../kernels/cross_entropy.ts";
import { IndexInput } from "../kernels/embedding.ts";
import { type BaseConfig, dimsOf } from "./base.ts";

/** The token ids of one step: B sequences of T+1 ids give inputs and next-token targets. */
export class TokenBatch {
  readonly ids: IndexInput;
  readonly positions: IndexInput;
  readonly targets: Tensor;
  readonly vocab: number;

  constructor(
    readonly engine: Engine,
    readonly config: BaseConfig,
    readonly B: number,
    readonly T: number,
  ) {
    const { vocab, context } = dimsOf(config);
    this.vocab = vocab;
    if (!Number.isInteger(B) || B < 1 || !Number.isInteger(T) || T < 1) {
      throw new ShapeError(`batch: B=${B} and T=${T} must be positive integers`);
    }
    if (T > context) {
      throw new ShapeError(`batch: T=${T} exceeds the model's n_positions ${context}`);
    }
    this.ids = new IndexInput(engine, B * T, vocab, "token ids");
    this.positions = new IndexInput(engine, B * T, context, "positions");
    this.positions.set(Array.from({ length: B * T }, (_, n) => n % T));
    this.targets = engine.tensor([B * T], { dtype: "u32", label: "targets" });
  }

  /** Writes B sequences of T+1 ids (inputs: all but the last id; targets: all but the first). */
  set(sequences: readonly (readonly number[])[]): void {
    const { B, T } = this;
    if (sequences.length !== B || sequences.some((s) => s.length !== T + 1)) {
      throw new ShapeError(`batch: expected ${B} sequences of ${T + 1} token ids`);
    }
    const targets = sequences.flatMap((s) => s.slice(1));
    checkTargets(targets, this.vocab);
    this.ids.set(sequences.flatMap((s) => s.slice(0, T)));
    this.engine.write(this.targets, targets);
  }

  dispose(): void {
    this.ids.dispose();
    this.positions.dispose();
    this.targets.dispose();
  }
}
