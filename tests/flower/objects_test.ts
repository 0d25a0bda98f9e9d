// The node's object layer against Flower's own (the pinned flwr in flower/.venv, run as a
// library by tests/flower/flower_objects.py): the same tensors, metrics and reply metadata give
// byte-identical .npy data and objects, hence the same SHA-256 ids, for ArrayChunk (including a
// 16 MB array whose repeated 5 MiB chunks are stored once), Array, ArrayRecord, MetricRecord,
// the ConfigRecord of a comigs node's facts, RecordDict and Message; and a ConfigRecord of every
// value type Flower writes reads back right.
// Plus the version rule (only flwr 1.42.x) and the node's key formats.

import { assert, assertEquals, assertThrows } from "../assert.ts";
import type { NamedTensor } from "../../model/safetensors.ts";
import type { Metadata } from "../../fed/flower/fleet.ts";
import { decodeNpyF32, encodeNpyF32 } from "../../fed/flower/npy.ts";
import { arrayObject, parseObject } from "../../fed/flower/objects.ts";
import { decodeValueRecord } from "../../fed/flower/record_values.ts";
import { messageObject, replyContent } from "../../fed/flower/records.ts";
import { checkSuperLinkVersion, FlowerVersionError } from "../../fed/flower/version.ts";
import {
  exportPrivateKeyPem,
  flowerTimestamp,
  generateNodeKeys,
  importPrivateKeyPem,
} from "../../fed/flower/node_keys.ts";
import { flowerPython, flowerTest } from "./harness.ts";

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const unhex = (h: string) => Uint8Array.from(h.match(/../g) ?? [], (x) => parseInt(x, 16));

const tensors = new Map<string, NamedTensor>([
  ["blocks.0.attn.lora_A", { shape: [2, 3], data: Float32Array.of(0.1, -2, 3.5e-8, 0, -0, 1e30) }],
  ["généraliste", { shape: [4], data: Float32Array.of(1, 2, 3, 4) }],
  ["scalar", { shape: [], data: Float32Array.of(7) }],
  ["empty", { shape: [0, 5], data: new Float32Array(0) }],
]);
const metrics = { "num-examples": 3, loss: 0.5, zero: 0, curve: [1, 2.5] };
/** A comigs node's facts (its ConfigRecord "config"): text, flags and integers. */
const facts = { client: 2, name: "fiction", ood: false, "train-tokens": 123456, big: -5 };
const metadata: Metadata = {
  runId: 9746101041102262493n,
  messageId: "",
  srcNodeId: 16390435537968811353n,
  dstNodeId: 1n,
  replyToMessageId: "ab".repeat(32),
  groupId: "1",
  ttl: 43187.25,
  messageType: "train",
  createdAt: 1796589387.125,
  srcTaskId: 0n,
  dstTaskId: 10713022208085340530n,
};

async function flowerOwn() {
  const spec = {
    tensors: Object.fromEntries(
      // As raw float32 bytes: JSON would lose -0.
      [...tensors].map((
        [n, t],
      ) => [n, { shape: t.shape, f32: hex(new Uint8Array(t.data.buffer)) }]),
    ),
    metrics,
    facts,
    metadata: Object.fromEntries(
      Object.entries(metadata).map(([k, v]) => [k, typeof v === "bigint" ? String(v) : v]),
    ),
  };
  return await flowerPython("flower_objects.py", spec);
}

flowerTest("flower objects: byte-identical to Flower's own deflate, ids included", async () => {
  const own = await flowerOwn();
  for (const [name, t] of tensors) {
    assertEquals(hex(encodeNpyF32(t)), own.npy[name], `.npy of ${name}`);
    const back = decodeNpyF32(unhex(own.npy[name]), name);
    assertEquals(back.shape, t.shape);
    assertEquals(Array.from(back.data), Array.from(t.data));
    const array = await arrayObject("float32", t.shape, encodeNpyF32(t));
    assertEquals({ id: array.id, content: hex(array.content) }, own.arrays[name], name);
  }
  const content = await replyContent({
    arrays: tensors,
    metrics: new Map<string, import("../../fed/flower/record_values.ts").MetricValue>([
      ["num-examples", { int: 3n }],
      ["loss", 0.5],
      ["zero", 0],
      ["curve", [1, 2.5]],
    ]),
    config: new Map<string, import("../../fed/flower/record_values.ts").ConfigOut>([
      ["client", { int: 2n }],
      ["name", "fiction"],
      ["ood", false],
      ["train-tokens", { int: 123456n }],
      ["big", { int: -5n }],
    ]),
  });
  const [arrayRecord, metricRecord, configRecord] = content.children;
  assertEquals({ id: arrayRecord.id, content: hex(arrayRecord.content) }, own.arrayRecord);
  assertEquals({ id: metricRecord.id, content: hex(metricRecord.content) }, own.metricRecord);
  assertEquals({ id: configRecord.id, content: hex(configRecord.content) }, own.factsRecord);
  assertEquals({ id: content.id, content: hex(content.content) }, own.recordDict);
  const message = await messageObject(metadata, content);
  assertEquals({ id: message.id, content: hex(message.content) }, own.message);

  const zeros = await arrayObject(
    "float32",
    [4_000_000],
    encodeNpyF32({
      shape: [4_000_000],
      data: new Float32Array(4_000_000),
    }),
  );
  assertEquals(zeros.id, own.zeros.array.id);
  assertEquals(hex(zeros.content), own.zeros.array.content);
  assertEquals(own.zeros.chunks.length, 4);
  assertEquals(zeros.children.map((c) => c.id), [...new Set<string>(own.zeros.chunks)]);

  const config = await parseObject(own.config.id, unhex(own.config.content));
  assertEquals(config.className, "ConfigRecord");
  const values = decodeValueRecord(config.body, "ConfigRecord");
  assertEquals(Object.fromEntries(values), {
    "server-round": 2,
    lr: 0.002,
    zero: 0,
    off: false,
    method: "comigs-1g1s",
    ids: [1, 2, 3],
    fs: [0.5, -1.25],
    blob: Uint8Array.of(0, 1),
    big: 2n ** 63n + 5n,
    neg: -7,
    flags: [true, false],
    strs: ["a", "é"],
  });
});

Deno.test("flower objects: a pulled object must hash to its id", async () => {
  const array = await arrayObject(
    "float32",
    [1],
    encodeNpyF32({ shape: [1], data: Float32Array.of(1) }),
  );
  const tampered = array.content.slice();
  tampered[tampered.length - 2] ^= 1;
  let error: Error | undefined;
  await parseObject(array.id, tampered).catch((e) => error = e);
  assert(error?.message.includes("does not hash to its id"), String(error));
});

Deno.test("flower version: only a flwr 1.42 SuperLink is accepted, with one clear error", () => {
  checkSuperLinkVersion("1.42.0", "http://x");
  checkSuperLinkVersion("1.42.7", "http://x");
  for (const other of ["1.41.0", "1.43.0", "2.42.0", "nightly"]) {
    assertThrows(
      () => checkSuperLinkVersion(other, "http://x"),
      FlowerVersionError,
      `the SuperLink at http://x runs flwr ${other}; this node speaks the Fleet API of flwr ` +
        "1.42.0 (supported: flwr 1.42.x)",
    );
  }
});

Deno.test("flower keys: a kept PKCS#8 key comes back as the same identity", async () => {
  const keys = await generateNodeKeys();
  const again = await importPrivateKeyPem(await exportPrivateKeyPem(keys), "node.pem");
  assertEquals(new TextDecoder().decode(again.publicPem), new TextDecoder().decode(keys.publicPem));
  assert(/^-----BEGIN PUBLIC KEY-----\n(.{64}\n)+.{1,64}\n-----END PUBLIC KEY-----\n$/.test(
    new TextDecoder().decode(keys.publicPem),
  ));
  assertEquals(
    flowerTimestamp(new Date(Date.UTC(2026, 11, 6, 20, 36, 27, 123))),
    "2026-12-06T20:36:27.123000+00:00",
  );
});
