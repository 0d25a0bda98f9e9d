// safetensors, read and written by hand: an 8-byte little-endian header length, a JSON header
// ({name: {dtype, shape, data_offsets}}, plus string-valued "__metadata__"), then raw row-major
// little-endian data. We read F32, F16 and BF16 (converted to f32) and write F32. Everything in
// the header is validated before any data is used, and writes are atomic (temp file + rename).

export interface NamedTensor {
  shape: number[];
  data: Float32Array;
}

export interface Safetensors {
  tensors: Map<string, NamedTensor>;
  metadata: Record<string, string>;
}

export class CheckpointError extends Error {
  constructor(source: string, message: string) {
    super(`${source}: ${message}`);
    this.name = "CheckpointError";
  }
}

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };
/** Headers larger than this are refused (the upstream reader's limit) rather than parsed. */
const MAX_HEADER_BYTES = 100_000_000;

export function parseSafetensors(
  bytes: Uint8Array,
  source: string,
  opts: { allowNonFinite?: boolean } = {},
): Safetensors {
  const fail = (message: string): never => {
    throw new CheckpointError(source, message);
  };
  if (bytes.length < 8) fail(`file is ${bytes.length} bytes, too short for a safetensors header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (headerLength > MAX_HEADER_BYTES) fail(`header length ${headerLength} is implausibly large`);
  if (8 + headerLength > bytes.length) {
    fail(`header length ${headerLength} runs past the end of the ${bytes.length}-byte file`);
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(
      bytes.subarray(8, 8 + headerLength),
    ));
  } catch (e) {
    fail(`header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail("header is not a JSON object");
  }
  const dataStart = 8 + headerLength;
  const dataLength = bytes.length - dataStart;
  const metadata: Record<string, string> = {};
  const entries: { name: string; dtype: string; shape: number[]; begin: number; end: number }[] =
    [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
        fail("__metadata__ is not an object");
      }
      for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof value !== "string") fail(`__metadata__.${key} is not a string`);
        metadata[key] = value as string;
      }
      continue;
    }
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof info !== "object" || info === null) fail(`tensor ${name}: entry is not an object`);
    const dtype = info.dtype;
    if (typeof dtype !== "string" || !(dtype in DTYPE_BYTES)) {
      fail(`tensor ${name}: dtype ${JSON.stringify(dtype)} is not one of F32, F16, BF16`);
    }
    const shape = info.shape;
    if (!Array.isArray(shape) || shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      fail(`tensor ${name}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    }
    const offsets = info.data_offsets;
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      offsets.some((o) => !Number.isSafeInteger(o) || o < 0)
    ) {
      fail(`tensor ${name}: data_offsets ${JSON.stringify(offsets)} is not [begin, end]`);
    }
    const [begin, end] = offsets as number[];
    const elements = (shape as number[]).reduce((a, b) => a * b, 1);
    if (end < begin || end > dataLength) {
      fail(`tensor ${name}: data_offsets [${begin}, ${end}] outside the ${dataLength} data bytes`);
    }
    if (end - begin !== elements * DTYPE_BYTES[dtype as string]) {
      fail(
        `tensor ${name}: ${end - begin} bytes for shape [${shape}] of ${dtype} ` +
          `(expected ${elements * DTYPE_BYTES[dtype as string]})`,
      );
    }
    entries.push({ name, dtype: dtype as string, shape: shape as number[], begin, end });
  }
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].begin < sorted[i - 1].end) {
      fail(`tensors ${sorted[i - 1].name} and ${sorted[i].name} overlap`);
    }
  }
  const tensors = new Map<string, NamedTensor>();
  for (const { name, dtype, shape, begin, end } of entries) {
    const data = decode(bytes.subarray(dataStart + begin, dataStart + end), dtype);
    if (!opts.allowNonFinite) {
      const bad = data.findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) fail(`tensor ${name}: element ${bad} is ${data[bad]} (not finite)`);
    }
    tensors.set(name, { shape, data });
  }
  return { tensors, metadata };
}

function decode(raw: Uint8Array, dtype: string): Float32Array {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const n = raw.byteLength / DTYPE_BYTES[dtype];
  const out = new Float32Array(n);
  if (dtype === "F32") {
    out.set(new Float32Array(raw.slice().buffer)); // little-endian hosts only, as WebGPU's are
  } else if (dtype === "BF16") {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) bits[i] = view.getUint16(2 * i, true) << 16;
  } else {
    for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
  }
  return out;
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** F32 safetensors bytes; tensors are laid out in the order given, header padded to 8 bytes. */
export function serializeSafetensors(
  tensors: Iterable<[string, NamedTensor]>,
  metadata: Record<string, string> = {},
): Uint8Array<ArrayBuffer> {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  const list = [...tensors];
  let offset = 0;
  for (const [name, { shape, data }] of list) {
    const elements = shape.reduce((a, b) => a * b, 1);
    if (elements !== data.length) {
      throw new Error(`tensor ${name}: shape [${shape}] does not match ${data.length} values`);
    }
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + data.length * 4] };
    offset += data.length * 4;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const [, { data }] of list) {
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at);
    at += data.length * 4;
  }
  return out;
}

export async function readSafetensors(
  path: string,
  opts: { allowNonFinite?: boolean } = {},
): Promise<Safetensors> {
  return parseSafetensors(await readCheckpointBytes(path), path, opts);
}

/** A checkpoint file's bytes; a file that cannot be read is a CheckpointError naming it. */
export async function readCheckpointBytes(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    throw new CheckpointError(path, `cannot read (${(e as Error).message})`);
  }
}

/** A checkpoint's text file (config.json), likewise. */
export async function readCheckpointText(path: string): Promise<string> {
  return new TextDecoder().decode(await readCheckpointBytes(path));
}

/** Numbers this process's temporary files, so that concurrent writes never share one. */
let tempFiles = 0;

/** Writes a file so that readers see either the old or the new contents, never a partial one. */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const temp = `${path}.${Deno.pid}.${tempFiles++}.tmp`;
  try {
    const file = await Deno.open(temp, { write: true, create: true, truncate: true });
    try {
      let written = 0;
      while (written < bytes.length) written += await file.write(bytes.subarray(written));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(temp, path);
  } catch (e) {
    await Deno.remove(temp).catch(() => {});
    throw e;
  }
}

export async function writeSafetensors(
  path: string,
  tensors: Iterable<[string, NamedTensor]>,
  metadata: Record<string, string> = {},
): Promise<void> {
  await writeFileAtomic(path, serializeSafetensors(tensors, metadata));
}
