// What every layer above a base model needs of it, whatever its family (GPT-2, or the Llama
// family: Llama, Qwen2): its configuration and dimensions, and the model on the engine. The
// families keep their Hugging Face config keys (model/config.ts, model/llama_config.ts); this
// file only tells them apart and reads the few numbers the rest of the code uses
// (model/base_model.ts: the model itself).
import { type GPT2Config, parameterShapes } from "./config.ts";
import { type LlamaConfig, llamaParameterShapes } from "./llama_config.ts";

export type BaseConfig = GPT2Config | LlamaConfig;
export type Family = "gpt2" | "llama";

export function familyOf(config: BaseConfig): Family {
  return "num_hidden_layers" in config ? "llama" : "gpt2";
}

export function isLlama(config: BaseConfig): config is LlamaConfig {
  return familyOf(config) === "llama";
}

/** The sizes the federation, evaluation and batches use. */
export interface BaseDims {
  layers: number;
  /** Width of the residual stream (the router's input). */
  hidden: number;
  vocab: number;
  /** The longest sequence the model takes. */
  context: number;
}

export function dimsOf(config: BaseConfig): BaseDims {
  return isLlama(config)
    ? {
      layers: config.num_hidden_layers,
      hidden: config.hidden_size,
      vocab: config.vocab_size,
      context: config.max_position_embeddings,
    }
    : {
      layers: config.n_layer,
      hidden: config.n_embd,
      vocab: config.vocab_size,
      context: config.n_positions,
    };
}

/** Every base tensor's canonical name and shape, in file order. */
export function baseParameterShapes(config: BaseConfig): Map<string, number[]> {
  return isLlama(config) ? llamaParameterShapes(config) : parameterShapes(config);
}

/** How many numbers the base model holds. */
export function parameterCount(config: BaseConfig): number {
  let n = 0;
  for (const shape of baseParameterShapes(config).values()) n += shape.reduce((a, b) => a * b, 1);
  return n;
}
