// The parameters of a base model on the engine, whatever its family: one tensor per canonical
// Hugging Face name, made from the checkpoint's weights, frozen or trainable as a whole, read
// back by name. GPT-2 (model/gpt2.ts) and the Llama family (model/llama.ts) extend it.
import type { Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tensor } from "../engine/tensor.ts";
import { splitRows } from "../kernels/embedding.ts";

export abstract class BaseParams {
  /** Base tensors under their canonical Hugging Face names. */
  readonly params = new Map<string, Tensor>();
  /** The token embedding in row blocks that fit one storage binding (one block when small). */
  protected embeddingBlocks: Tensor[] = [];

  constructor(
    readonly engine: Engine,
    family: string,
    shapes: ReadonlyMap<string, number[]>,
    weights: ReadonlyMap<string, Float32Array>,
    readonly embeddingName: string,
  ) {
    for (const [name, shape] of shapes) {
      const data = weights.get(name);
      if (!data) throw new ShapeError(`${family}: weight ${name} missing`);
      this.params.set(name, engine.tensor(shape, { data, label: name }));
    }
    this.#splitEmbedding();
  }

  /** Makes every base tensor trainable (full training) or frozen (fine-tuning adapters). */
  setTrainable(trainable: boolean): void {
    for (const p of this.params.values()) p.requiresGrad = trainable;
    this.#splitEmbedding(); // the blocks are views that carry the embedding's requiresGrad
  }

  #splitEmbedding(): void {
    this.embeddingBlocks = splitRows(this.engine, this.param(this.embeddingName));
  }

  param(name: string): Tensor {
    const p = this.params.get(name);
    if (!p) throw new Error(`${this.constructor.name}: no parameter ${name}`);
    return p;
  }

  /** Reads every base tensor back, under its canonical name. */
  async weights(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const [name, p] of this.params) out.set(name, await this.engine.readF32(p));
    return out;
  }

  dispose(): void {
    for (const p of this.params.values()) p.dispose();
    this.params.clear();
  }
}
