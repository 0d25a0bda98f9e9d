// A small Llama-family model (GQA, tied embeddings, random weights) with a real Hugging Face
// tokenizer beside it (the llama3-style test tokenizer, vocab 1003): the files of a Hub
// repository or a model folder, for tests that need a Llama run end to end.
import {
  type LlamaConfig,
  llamaConfigJson,
  llamaParameterShapes,
  parseLlamaConfig,
} from "../../model/llama_config.ts";
import type { NamedTensor } from "../../model/safetensors.ts";
import { Rng } from "../util.ts";
import { hfSafetensorsBytes } from "./hf_files.ts";

const TOKENIZER = new URL("../golden/hf_tokenizers/llama3_style/tokenizer.json", import.meta.url);

/** The model's configuration: 2 blocks of width 16, 4 heads over 2 KV heads, vocab 1003. */
export function tinyLlamaConfig(): LlamaConfig {
  return parseLlamaConfig({
    model_type: "llama",
    hidden_size: 16,
    intermediate_size: 24,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 1003,
    max_position_embeddings: 64,
    tie_word_embeddings: true,
    eos_token_id: 1001,
  }, "config.json");
}

/** File name → bytes: config.json, model.safetensors (F32) and tokenizer.json. */
export function tinyLlamaFiles(seed = 7): Map<string, Uint8Array> {
  const config = tinyLlamaConfig();
  const rng = new Rng(seed);
  const tensors = [...llamaParameterShapes(config)].map(([name, shape]): [string, NamedTensor] => {
    const data = Float32Array.from(rng.uniform(shape.reduce((a, b) => a * b, 1)), (u) => u * 0.2);
    return [name, { shape, data }];
  });
  return new Map([
    ["config.json", new TextEncoder().encode(JSON.stringify(llamaConfigJson(config)))],
    ["model.safetensors", hfSafetensorsBytes(tensors, "F32")],
    ["tokenizer.json", Deno.readFileSync(TOKENIZER)],
  ]);
}

/** The files in folder `dir` (made). */
export async function writeTinyLlama(dir: string, seed = 7): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  for (const [name, bytes] of tinyLlamaFiles(seed)) await Deno.writeFile(`${dir}/${name}`, bytes);
}
