// Llama-family base folders in the Hugging Face layout: config.json + model.safetensors (or its
// shards and index), F32/F16/BF16 read as f32. Tensors keep their Hugging Face names, which are
// our canonical names for this family. Reading names every missing, unexpected or mis-shaped
// tensor at once; the rotary `inv_freq` buffers older transformers saved are ignored (they are
// recomputed from the config), anything else unexpected is refused. A tied model may still carry
// `lm_head.weight` if it equals the embeddings. Writing: config.json + one F32 model.safetensors.
import {
  type LlamaConfig,
  llamaConfigJson,
  llamaParameterShapes,
  parseLlamaConfig,
} from "./llama_config.ts";
import {
  CheckpointError,
  type NamedTensor,
  readCheckpointText,
  writeFileAtomic,
  writeSafetensors,
} from "./safetensors.ts";
import { readSafetensorsFolder, SINGLE_FILE } from "./safetensors_shards.ts";

export interface LlamaCheckpoint {
  config: LlamaConfig;
  /** Every tensor of llamaParameterShapes(config), f32, in its own shape. */
  weights: Map<string, Float32Array>;
}

/** Buffers, not parameters: transformers recomputes them from rope_theta and rope_scaling. */
const ROTARY_BUFFER = /^model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$/;

export async function readLlamaConfig(dir: string): Promise<LlamaConfig> {
  const path = `${dir}/config.json`;
  return parseLlamaConfigText(await readCheckpointText(path), path);
}

export function parseLlamaConfigText(text: string, path: string): LlamaConfig {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(path, `not valid JSON (${(e as Error).message})`);
  }
  return parseLlamaConfig(json, path);
}

export async function loadLlamaCheckpoint(dir: string): Promise<LlamaCheckpoint> {
  const config = await readLlamaConfig(dir);
  const { tensors, source } = await readSafetensorsFolder(dir);
  return { config, weights: checkLlamaTensors(config, tensors, source) };
}

/** Checks file tensors against the config's layout; returns exactly the layout's tensors. */
export function checkLlamaTensors(
  config: LlamaConfig,
  tensors: Map<string, NamedTensor>,
  source: string,
): Map<string, Float32Array> {
  const expected = llamaParameterShapes(config);
  const problems: string[] = [];
  const missing = [...expected.keys()].filter((name) => !tensors.has(name));
  if (missing.length) problems.push(`missing tensors: ${missing.join(", ")}`);
  const tiedHead = config.tie_word_embeddings ? tensors.get("lm_head.weight") : undefined;
  const unexpected = [...tensors.keys()].filter((name) =>
    !expected.has(name) && !ROTARY_BUFFER.test(name) && !(tiedHead && name === "lm_head.weight")
  );
  if (unexpected.length) problems.push(`unexpected tensors: ${unexpected.join(", ")}`);
  for (const [name, shape] of expected) {
    const tensor = tensors.get(name);
    if (tensor && tensor.shape.join() !== shape.join()) {
      problems.push(`${name} has shape [${tensor.shape}], expected [${shape}]`);
    }
  }
  const embeddings = tensors.get("model.embed_tokens.weight");
  if (tiedHead && embeddings && !sameValues(tiedHead.data, embeddings.data)) {
    problems.push(
      "lm_head.weight differs from model.embed_tokens.weight, but config.json says " +
        "tie_word_embeddings: true (set it to false if the head is separate)",
    );
  }
  if (problems.length) {
    throw new CheckpointError(
      source,
      `does not match the ${config.model_type} layout of its config.json:\n  ${
        problems.join("\n  ")
      }`,
    );
  }
  return new Map([...expected.keys()].map((name) => [name, tensors.get(name)!.data]));
}

function sameValues(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Writes config.json and one F32 model.safetensors (canonical names), each atomically. */
export async function saveLlamaCheckpoint(
  dir: string,
  checkpoint: LlamaCheckpoint,
): Promise<void> {
  const { config, weights } = checkpoint;
  const shapes = llamaParameterShapes(config);
  for (const [name, shape] of shapes) {
    const size = shape.reduce((a, b) => a * b, 1);
    if (weights.get(name)?.length !== size) {
      throw new CheckpointError(
        dir,
        `cannot save: ${name} needs ${size} values of shape [${shape}]`,
      );
    }
  }
  const extra = [...weights.keys()].filter((name) => !shapes.has(name));
  if (extra.length) {
    throw new CheckpointError(dir, `cannot save: not in the layout: ${extra.join(", ")}`);
  }
  await Deno.mkdir(dir, { recursive: true });
  await writeFileAtomic(
    `${dir}/config.json`,
    new TextEncoder().encode(JSON.stringify(llamaConfigJson(config), null, 2) + "\n"),
  );
  await writeSafetensors(
    `${dir}/${SINGLE_FILE}`,
    [...shapes].map(([name, shape]) => [name, { shape, data: weights.get(name)! }]),
    { format: "pt" },
  );
}
