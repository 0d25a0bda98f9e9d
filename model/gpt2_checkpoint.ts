// Base-model folders in the Hugging Face GPT-2 layout: config.json + model.safetensors. Reading
// accepts Hugging Face's quirks (a `transformer.` prefix, an `lm_head.weight` tied to `wte`, the
// causal-mask buffers) and names every missing, unexpected or mis-shaped tensor at once.
import { type GPT2Config, parameterShapes, parseConfig } from "./config.ts";
import {
  CheckpointError,
  type NamedTensor,
  parseSafetensors,
  readCheckpointText,
  readSafetensors,
  writeFileAtomic,
  writeSafetensors,
} from "./safetensors.ts";

export interface Gpt2Checkpoint {
  config: GPT2Config;
  /** Canonical names (no prefix) to f32 data in the tensor's own shape. */
  weights: Map<string, Float32Array>;
}

/** Causal-mask buffers Hugging Face stores in some GPT-2 files; they carry no parameters. */
const MASK_BUFFER = /^h\.\d+\.attn\.(bias|masked_bias)$/;

export async function readGpt2Config(dir: string): Promise<GPT2Config> {
  const path = `${dir}/config.json`;
  return gpt2ConfigFromText(await readCheckpointText(path), path);
}

export async function loadGpt2Checkpoint(dir: string): Promise<Gpt2Checkpoint> {
  const config = await readGpt2Config(dir);
  const path = `${dir}/model.safetensors`;
  const { tensors } = await readSafetensors(path);
  return { config, weights: checkGpt2Tensors(config, tensors, path) };
}

/** A base model from the contents of its two files (a browser tab fetches them). */
export function parseGpt2Checkpoint(
  configText: string,
  safetensors: Uint8Array,
  dir: string,
): Gpt2Checkpoint {
  const config = gpt2ConfigFromText(configText, `${dir}/config.json`);
  const path = `${dir}/model.safetensors`;
  const { tensors } = parseSafetensors(safetensors, path);
  return { config, weights: checkGpt2Tensors(config, tensors, path) };
}

export function gpt2ConfigFromText(text: string, path: string): GPT2Config {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(path, `not valid JSON (${(e as Error).message})`);
  }
  return parseConfig(json, path);
}

/** Maps file tensors to canonical names and checks them against the config's layout. */
export function checkGpt2Tensors(
  config: GPT2Config,
  tensors: Map<string, NamedTensor>,
  source: string,
): Map<string, Float32Array> {
  const expected = parameterShapes(config);
  const found = new Map<string, NamedTensor>();
  let lmHead: NamedTensor | undefined;
  const unexpected: string[] = [];
  for (const [fileName, tensor] of tensors) {
    const name = fileName.startsWith("transformer.") ? fileName.slice(12) : fileName;
    if (MASK_BUFFER.test(name)) continue;
    if (name === "lm_head.weight") lmHead = tensor;
    else if (expected.has(name)) found.set(name, tensor);
    else unexpected.push(fileName);
  }
  const problems: string[] = [];
  const missing = [...expected.keys()].filter((name) => !found.has(name));
  if (missing.length) problems.push(`missing tensors: ${missing.join(", ")}`);
  if (unexpected.length) problems.push(`unexpected tensors: ${unexpected.join(", ")}`);
  for (const [name, tensor] of found) {
    const shape = expected.get(name)!;
    if (tensor.shape.join() !== shape.join()) {
      problems.push(`${name} has shape [${tensor.shape}], expected [${shape}]`);
    }
  }
  const wte = found.get("wte.weight");
  if (lmHead && wte && !sameValues(lmHead.data, wte.data)) {
    problems.push("lm_head.weight differs from wte.weight (only tied embeddings are supported)");
  }
  if (problems.length) {
    throw new CheckpointError(
      source,
      `does not match the GPT-2 layout of its config.json:\n  ${problems.join("\n  ")}`,
    );
  }
  return new Map([...expected.keys()].map((name) => [name, found.get(name)!.data]));
}

function sameValues(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Writes config.json and model.safetensors (canonical names, F32), each atomically. */
export async function saveGpt2Checkpoint(dir: string, checkpoint: Gpt2Checkpoint): Promise<void> {
  const { config, weights } = checkpoint;
  const shapes = parameterShapes(config);
  for (const [name, shape] of shapes) {
    const size = shape.reduce((a, b) => a * b, 1);
    if (weights.get(name)?.length !== size) {
      throw new CheckpointError(
        dir,
        `cannot save: ${name} needs ${size} values of shape [${shape}]`,
      );
    }
  }
  await Deno.mkdir(dir, { recursive: true });
  const hfConfig = { model_type: "gpt2", architectures: ["GPT2LMHeadModel"], ...config };
  await writeFileAtomic(
    `${dir}/config.json`,
    new TextEncoder().encode(JSON.stringify(hfConfig, null, 2) + "\n"),
  );
  await writeSafetensors(
    `${dir}/model.safetensors`,
    [...shapes].map(([name, shape]) => [name, { shape, data: weights.get(name)! }]),
  );
}
