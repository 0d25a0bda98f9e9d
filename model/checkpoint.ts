// Base-model folders of either family in the Hugging Face layout: config.json (its model_type
// says the family: "llama" or "qwen2" for the Llama family, "gpt2" or none for GPT-2) and the
// weights (model/gpt2_checkpoint.ts, model/llama_checkpoint.ts read and check each family's).
import type { BaseConfig } from "./base.ts";
import {
  gpt2ConfigFromText,
  loadGpt2Checkpoint,
  parseGpt2Checkpoint,
  saveGpt2Checkpoint,
} from "./gpt2_checkpoint.ts";
import type { GPT2Config } from "./config.ts";
import {
  checkLlamaTensors,
  loadLlamaCheckpoint,
  parseLlamaConfigText,
  saveLlamaCheckpoint,
} from "./llama_checkpoint.ts";
import { isLlama } from "./base.ts";
import { CheckpointError, parseSafetensors, readCheckpointText } from "./safetensors.ts";

export interface BaseCheckpoint {
  config: BaseConfig;
  /** Canonical names to f32 data in the tensor's own shape. */
  weights: Map<string, Float32Array>;
}

const LLAMA_TYPES = ["llama", "qwen2"];

/** Whether the text of a config.json is of the Llama family (else it is read as GPT-2). */
function isLlamaText(text: string, path: string): boolean {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(path, `not valid JSON (${(e as Error).message})`);
  }
  const type = (json as { model_type?: unknown } | null)?.model_type;
  return typeof type === "string" && LLAMA_TYPES.includes(type);
}

/** The configuration of a config.json's text, of either family. */
export function configFromText(text: string, path: string): BaseConfig {
  return isLlamaText(text, path)
    ? parseLlamaConfigText(text, path)
    : gpt2ConfigFromText(text, path);
}

/** A base folder's configuration. */
export async function readConfig(dir: string): Promise<BaseConfig> {
  const path = `${dir}/config.json`;
  return configFromText(await readCheckpointText(path), path);
}

/** A base folder's configuration and weights, checked against each other. */
export async function loadBaseCheckpoint(dir: string): Promise<BaseCheckpoint> {
  return isLlama(await readConfig(dir))
    ? await loadLlamaCheckpoint(dir)
    : await loadGpt2Checkpoint(dir);
}

/** A base model from the contents of config.json and one model.safetensors (a browser tab). */
export function parseBaseCheckpoint(
  configText: string,
  safetensors: Uint8Array,
  dir: string,
): BaseCheckpoint {
  const path = `${dir}/config.json`;
  if (!isLlamaText(configText, path)) return parseGpt2Checkpoint(configText, safetensors, dir);
  const config = parseLlamaConfigText(configText, path);
  const source = `${dir}/model.safetensors`;
  const { tensors } = parseSafetensors(safetensors, source);
  return { config, weights: checkLlamaTensors(config, tensors, source) };
}

/** Writes config.json and one F32 model.safetensors (canonical names), each atomically. */
export async function saveBaseCheckpoint(dir: string, checkpoint: BaseCheckpoint): Promise<void> {
  const { config, weights } = checkpoint;
  if (isLlama(config)) await saveLlamaCheckpoint(dir, { config, weights });
  else await saveGpt2Checkpoint(dir, { config: config as GPT2Config, weights });
}
