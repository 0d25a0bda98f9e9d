// A base model on the engine, whatever its family: what training, evaluation and the federation
// call on it. GPT-2 (model/gpt2.ts) and the Llama family (model/llama.ts) implement it;
// model/load.ts makes the right one from a configuration.
import type { Engine } from "../engine/device.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { BaseConfig } from "./base.ts";
import type { TokenBatch } from "./batch.ts";

/** A forward pass's outputs. */
export interface ModelOutput {
  /** [B·T, V]. */
  logits: Tensor;
  /** [1]: mean next-token cross-entropy. */
  loss: Tensor;
  /** [B·T]: each position's cross-entropy (no gradient). */
  tokenLosses: Tensor;
}

/** A base model on the engine: frozen under CoMiGS, trainable when pretrained. */
export interface BaseModel {
  readonly engine: Engine;
  readonly config: BaseConfig;
  /** Records the forward pass of `batch` on `tape`. */
  forward(tape: Tape, batch: TokenBatch): ModelOutput;
  /** Base tensors under their canonical Hugging Face names. */
  readonly params: Map<string, Tensor>;
  /** Makes every base tensor trainable (full training) or frozen (fine-tuning adapters). */
  setTrainable(trainable: boolean): void;
  /** Reads every base tensor back, under its canonical name. */
  weights(): Promise<Map<string, Float32Array>>;
  dispose(): void;
}
