// Writes model folders the way Hugging Face's save_pretrained lays them out (config.json, one
// safetensors file or shards + model.safetensors.index.json, F32/F16/BF16 storage), with a
// safetensors writer of its own so that the reader is tested against an independent encoder.
import type { NamedTensor } from "../../model/safetensors.ts";
import type { Rng } from "../util.ts";

export type StoredDtype = "F32" | "F16" | "BF16";

/** Values k/128, |k| ≤ 127: exact in F32, F16 and BF16, so every storage reads back the same. */
export function halfExactValues(rng: Rng, n: number): Float32Array {
  return Float32Array.from(rng.uniform(n), (u) => Math.round(u * 127) / 128);
}

export function f16Bits(value: number): number {
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0;
  const abs = Math.abs(value);
  if (abs === 0) return sign;
  const exponent = Math.floor(Math.log2(abs));
  const mantissa = (abs / 2 ** exponent - 1) * 1024;
  if (exponent < -14 || exponent > 15 || !Number.isInteger(mantissa)) {
    throw new Error(`${value} is not exactly representable as a normal f16`);
  }
  return sign | ((exponent + 15) << 10) | mantissa;
}

export function bf16Bits(value: number): number {
  const bits = new Uint32Array(Float32Array.of(value).buffer)[0];
  if (bits & 0xffff) throw new Error(`${value} is not exactly representable as bf16`);
  return bits >>> 16;
}

function encode(data: Float32Array, dtype: StoredDtype): Uint8Array {
  if (dtype === "F32") return new Uint8Array(data.slice().buffer);
  const out = new Uint8Array(data.length * 2);
  const view = new DataView(out.buffer);
  const bits = dtype === "F16" ? f16Bits : bf16Bits;
  data.forEach((value, i) => view.setUint16(2 * i, bits(value), true));
  return out;
}

/** A safetensors file as torch's safe_open writer makes it: dtype as stored, format "pt". */
export function hfSafetensorsBytes(
  tensors: [string, NamedTensor][],
  dtype: StoredDtype,
): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, { shape, data }] of tensors) {
    const bytes = encode(data, dtype);
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/**
 * config.json and the weights: one model.safetensors, or `shards` files named
 * model-0000k-of-0000n.safetensors (tensors split in order) with their index.
 */
export async function writeHfModelFolder(
  dir: string,
  config: Record<string, unknown>,
  tensors: [string, NamedTensor][],
  opts: { dtype?: StoredDtype; shards?: number } = {},
): Promise<void> {
  const dtype = opts.dtype ?? "F32";
  const shards = opts.shards ?? 1;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config, null, 2));
  if (shards === 1) {
    await Deno.writeFile(`${dir}/model.safetensors`, hfSafetensorsBytes(tensors, dtype));
    return;
  }
  const pad = (k: number) => String(k).padStart(5, "0");
  const perShard = Math.ceil(tensors.length / shards);
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  for (let k = 0; k < shards; k++) {
    const file = `model-${pad(k + 1)}-of-${pad(shards)}.safetensors`;
    const part = tensors.slice(k * perShard, (k + 1) * perShard);
    for (const [name, { data }] of part) {
      weightMap[name] = file;
      totalSize += data.length * (dtype === "F32" ? 4 : 2);
    }
    await Deno.writeFile(`${dir}/${file}`, hfSafetensorsBytes(part, dtype));
  }
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2),
  );
}
