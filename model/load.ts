// A model ready to use from one library call: the base folder (config.json, weights and the
// tokenizer beside them) on the GPU and, when asked, CoMiGS adapters on it: fresh ones from an
// adapter configuration, or a client's adapters file.
import type { Engine } from "../engine/device.ts";
import { type AdapterConfig, AdapterTensors, initAdapters, loadAdapters } from "./adapters.ts";
import { type BaseConfig, isLlama } from "./base.ts";
import type { BaseModel } from "./base_model.ts";
import { loadBaseCheckpoint } from "./checkpoint.ts";
import type { GPT2Config } from "./config.ts";
import { GPT2 } from "./gpt2.ts";
import { Llama } from "./llama.ts";
import { loadModelTokenizer } from "./tokenizer.ts";
import type { Tokenizer } from "./tokenizer_contract.ts";

/** The base model of `config`'s family on the engine, with `weights`. */
export function createModel(
  engine: Engine,
  config: BaseConfig,
  weights: ReadonlyMap<string, Float32Array>,
): BaseModel {
  return isLlama(config)
    ? new Llama(engine, config, weights)
    : new GPT2(engine, config as GPT2Config, weights);
}

/** Which adapters to put on the base: fresh (deterministic from `seed`), or a file's. */
export type AdapterSource = { config: AdapterConfig; seed?: number } | { file: string };

export interface LoadedModel {
  base: BaseModel;
  tokenizer: Tokenizer;
  /** The adapters, when asked for (run forwardAdapted with them). */
  adapters: AdapterTensors | null;
  /** Frees the model's GPU tensors. */
  dispose(): void;
}

/** The base model in folder `dir`, with `adapters` on it when given. */
export async function loadModel(
  engine: Engine,
  dir: string,
  adapters?: AdapterSource,
): Promise<LoadedModel> {
  const { config, weights } = await loadBaseCheckpoint(dir);
  const tokenizer = await loadModelTokenizer(dir, config);
  const file = adapters && "file" in adapters ? await loadAdapters(adapters.file, config) : null;
  const base = createModel(engine, config, weights);
  let tensors: AdapterTensors | null = null;
  if (file) tensors = new AdapterTensors(engine, config, file.config, file.values);
  else if (adapters && "config" in adapters) {
    const init = initAdapters(config, adapters.config, adapters.seed ?? 0);
    tensors = new AdapterTensors(engine, config, adapters.config, init);
  }
  return {
    base,
    tokenizer,
    adapters: tensors,
    dispose() {
      tensors?.dispose();
      base.dispose();
    },
  };
}
