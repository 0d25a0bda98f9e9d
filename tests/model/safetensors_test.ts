import { assert, assertEquals, assertRejects, assertThrows } from "../assert.ts";
import {
  CheckpointError,
  parseSafetensors,
  readSafetensors,
  serializeSafetensors,
  writeFileAtomic,
  writeSafetensors,
} from "../../model/safetensors.ts";

/** A file from a header object and raw data bytes, as a foreign writer might produce it. */
function craft(header: unknown, data: Uint8Array = new Uint8Array(), headerText?: string) {
  const json = new TextEncoder().encode(headerText ?? JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

const f32Bytes = (values: number[]) => new Uint8Array(Float32Array.from(values).buffer);

Deno.test("safetensors round-trips F32 tensors and string metadata", () => {
  const a = { shape: [2, 3], data: Float32Array.from([1, -2, 3.5, 0, 1e-30, 7]) };
  const b = { shape: [1], data: Float32Array.from([42]) };
  const bytes = serializeSafetensors([["a", a], ["b.weight", b]], { lora_rank: "8" });
  assertEquals(Number(new DataView(bytes.buffer).getBigUint64(0, true)) % 8, 0);
  const parsed = parseSafetensors(bytes, "mem");
  assertEquals(parsed.metadata, { lora_rank: "8" });
  assertEquals(parsed.tensors.get("a"), a);
  assertEquals(parsed.tensors.get("b.weight"), b);
});

Deno.test("safetensors reads F16 and BF16 as f32", () => {
  // F16: 1.0 = 0x3c00, -2.0 = 0xc000, 65504 = 0x7bff, smallest subnormal 2^-24 = 0x0001.
  // BF16: 1.0 = 0x3f80, -0.5 = 0xbf00.
  const f16 = new Uint8Array(new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001]).buffer);
  const bf16 = new Uint8Array(new Uint16Array([0x3f80, 0xbf00]).buffer);
  const data = new Uint8Array([...f16, ...bf16]);
  const parsed = parseSafetensors(
    craft({
      h: { dtype: "F16", shape: [4], data_offsets: [0, 8] },
      b: { dtype: "BF16", shape: [2], data_offsets: [8, 12] },
    }, data),
    "mem",
  );
  assertEquals([...parsed.tensors.get("h")!.data], [1, -2, 65504, 2 ** -24]);
  assertEquals([...parsed.tensors.get("b")!.data], [1, -0.5]);
});

const malformed: [string, Uint8Array, RegExp][] = [
  ["shorter than the length prefix", new Uint8Array(5), /too short/],
  ["header length past the end", craft({}).subarray(0, 6 + 2), /runs past the end/],
  ["header not JSON", craft(null, undefined, "{nope"), /not valid UTF-8 JSON/],
  ["header a JSON array", craft([1, 2]), /not a JSON object/],
  [
    "unsupported dtype",
    craft({ x: { dtype: "I64", shape: [1], data_offsets: [0, 8] } }, new Uint8Array(8)),
    /dtype "I64"/,
  ],
  [
    "negative shape",
    craft({ x: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4)),
    /shape/,
  ],
  [
    "offsets past the data (truncated file)",
    craft({ x: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }, new Uint8Array(12)),
    /outside the 12 data bytes/,
  ],
  [
    "byte count disagrees with shape",
    craft({ x: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)),
    /expected 12/,
  ],
  [
    "overlapping tensors",
    craft({
      x: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      y: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
    }, new Uint8Array(12)),
    /overlap/,
  ],
  [
    "non-string metadata",
    craft({ __metadata__: { lora_rank: 8 } }),
    /__metadata__\.lora_rank is not a string/,
  ],
  [
    "NaN values",
    craft({ w: { dtype: "F32", shape: [3], data_offsets: [0, 12] } }, f32Bytes([1, NaN, 2])),
    /tensor w: element 1 is NaN/,
  ],
  [
    "infinite values",
    craft({ w: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, f32Bytes([-Infinity])),
    /not finite/,
  ],
];
for (const [what, bytes, message] of malformed) {
  Deno.test(`safetensors rejects a malformed file: ${what}`, () => {
    assertThrows(() => parseSafetensors(bytes, "bad.safetensors"), CheckpointError, message);
  });
}

Deno.test("safetensors writes atomically and leaves no temp file", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/m.safetensors`;
  await writeSafetensors(path, [["w", { shape: [2], data: Float32Array.from([1, 2]) }]]);
  await writeSafetensors(path, [["w", { shape: [2], data: Float32Array.from([3, 4]) }]]);
  assertEquals([...(await readSafetensors(path)).tensors.get("w")!.data], [3, 4]);
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["m.safetensors"]);
  await assertRejects(() => readSafetensors(`${dir}/missing.safetensors`), CheckpointError);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("concurrent atomic writes of one file all land, and one of them is what remains", async () => {
  // A served run writes credentials.json once per joining client, several at the same time.
  const dir = await Deno.makeTempDir();
  const path = `${dir}/credentials.json`;
  const texts = Array.from({ length: 8 }, (_, i) => `{"client": ${i}}`);
  await Promise.all(texts.map((t) => writeFileAtomic(path, new TextEncoder().encode(t))));
  assert(texts.includes(await Deno.readTextFile(path)));
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["credentials.json"]);
  await Deno.remove(dir, { recursive: true });
});
