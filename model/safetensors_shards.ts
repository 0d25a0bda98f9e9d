// The weights of a Hugging Face model folder: one `model.safetensors`, or shards
// `model-0000x-of-0000y.safetensors` listed by `model.safetensors.index.json`, whose `weight_map`
// names the shard of every tensor. As in transformers, a single file wins when both are present.
// The index is checked against the shards both ways: a tensor it names must be in its shard, and
// a shard must hold no tensor the index does not name (a mixed-up or partial download).
import { CheckpointError, type NamedTensor, readSafetensors } from "./safetensors.ts";

export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";

export interface SafetensorsIndex {
  /** Tensor name to the shard file (a plain name in the same folder) that holds it. */
  weightMap: Map<string, string>;
  /** The distinct shard files, sorted. */
  shards: string[];
}

export function parseSafetensorsIndex(text: string, source: string): SafetensorsIndex {
  const fail = (message: string): never => {
    throw new CheckpointError(source, message);
  };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail(`not valid JSON (${(e as Error).message})`);
  }
  const map = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    fail('has no "weight_map" object (tensor name to shard file)');
  }
  const weightMap = new Map<string, string>();
  for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
    // Shard names become paths on disk (and URLs when downloading): plain names only.
    if (typeof file !== "string" || !/^[\w.-]+\.safetensors$/.test(file) || file.startsWith(".")) {
      fail(`weight_map["${name}"] is ${JSON.stringify(file)}, not a .safetensors file name`);
    }
    weightMap.set(name, file as string);
  }
  if (weightMap.size === 0) fail("weight_map is empty");
  return { weightMap, shards: [...new Set(weightMap.values())].sort() };
}

/** Joins parsed shards into one tensor map, checking each tensor is where the index says. */
export function joinShards(
  index: SafetensorsIndex,
  shards: Map<string, Map<string, NamedTensor>>,
  source: string,
): Map<string, NamedTensor> {
  const problems: string[] = [];
  const tensors = new Map<string, NamedTensor>();
  for (const [name, file] of index.weightMap) {
    const tensor = shards.get(file)?.get(name);
    if (tensor) tensors.set(name, tensor);
    else problems.push(`${name} is mapped to ${file}, which does not hold it`);
  }
  for (const [file, held] of shards) {
    for (const name of held.keys()) {
      if (index.weightMap.get(name) !== file) {
        problems.push(`${file} holds ${name}, which the index does not map to it`);
      }
    }
  }
  if (problems.length) {
    throw new CheckpointError(source, `disagrees with its shards:\n  ${problems.join("\n  ")}`);
  }
  return tensors;
}

/** All tensors of the folder, and the file (or index) they came from, for error messages. */
export async function readSafetensorsFolder(
  dir: string,
): Promise<{ tensors: Map<string, NamedTensor>; source: string }> {
  const single = `${dir}/${SINGLE_FILE}`;
  if (await isFile(single)) {
    return { tensors: (await readSafetensors(single)).tensors, source: single };
  }
  const indexPath = `${dir}/${INDEX_FILE}`;
  if (!await isFile(indexPath)) {
    const hint = await isFile(`${dir}/pytorch_model.bin`)
      ? " (pytorch_model.bin is not read: convert it to safetensors)"
      : "";
    throw new CheckpointError(dir, `has neither ${SINGLE_FILE} nor ${INDEX_FILE}${hint}`);
  }
  const index = parseSafetensorsIndex(await Deno.readTextFile(indexPath), indexPath);
  const shards = new Map<string, Map<string, NamedTensor>>();
  for (const file of index.shards) {
    const path = `${dir}/${file}`;
    if (!await isFile(path)) {
      const names = [...index.weightMap].filter(([, f]) => f === file).map(([name]) => name);
      throw new CheckpointError(
        indexPath,
        `names shard ${file} (${names.length} tensors, e.g. ${names[0]}), but ${path} is missing`,
      );
    }
    shards.set(file, (await readSafetensors(path)).tensors);
  }
  return { tensors: joinShards(index, shards, indexPath), source: indexPath };
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw new CheckpointError(path, `cannot read (${(e as Error).message})`);
  }
}
