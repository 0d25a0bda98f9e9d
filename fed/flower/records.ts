// A message's content as comigs values: RecordDict objects ↔ {name: arrays | config | metrics},
// with ArrayRecord arrays as our tensors (`NamedTensor`, float32 only: what Flower's FedAvg
// averages and what the shared LoRA tensors are).

import type { NamedTensor } from "../../model/safetensors.ts";
import { encodeMessage, type MessageError, type Metadata } from "./fleet.ts";
import { decodeNpyF32, encodeNpyF32 } from "./npy.ts";
import {
  arrayObject,
  type FlowerObject,
  jsonBody,
  makeObject,
  ObjectFormatError,
  type ParsedObject,
  refsObject,
} from "./objects.ts";
import {
  type ConfigOut,
  type ConfigValue,
  decodeValueRecord,
  encodeConfigRecord,
  encodeMetricRecord,
  type MetricValue,
} from "./record_values.ts";

export type FlowerRecord =
  | { kind: "arrays"; arrays: Map<string, NamedTensor> }
  | { kind: "config"; values: Map<string, ConfigValue> }
  | { kind: "metrics"; values: Map<string, ConfigValue> };

/** Rebuilds a RecordDict from its pulled, parsed objects (keyed by id). */
export function inflateRecordDict(
  id: string,
  objects: Map<string, ParsedObject>,
): Map<string, FlowerRecord> {
  const dict = get(objects, id, "RecordDict");
  const out = new Map<string, FlowerRecord>();
  for (const [name, childId] of refs(dict, id)) {
    const child = get(objects, childId, undefined);
    if (child.className === "ArrayRecord") {
      const arrays = new Map<string, NamedTensor>();
      for (const [arrayName, arrayId] of refs(child, childId)) {
        arrays.set(arrayName, inflateArray(arrayId, objects, `array "${arrayName}"`));
      }
      out.set(name, { kind: "arrays", arrays });
    } else if (child.className === "ConfigRecord" || child.className === "MetricRecord") {
      const values = decodeValueRecord(child.body, `${child.className} "${name}"`);
      out.set(name, { kind: child.className === "ConfigRecord" ? "config" : "metrics", values });
    } else {
      throw new ObjectFormatError(`record "${name}" is a ${child.className}, not a record`);
    }
  }
  return out;
}

function get(objects: Map<string, ParsedObject>, id: string, cls: string | undefined) {
  const o = objects.get(id);
  if (!o) throw new ObjectFormatError(`object ${id} is referenced but was not pulled`);
  if (cls && o.className !== cls) {
    throw new ObjectFormatError(`object ${id} is a ${o.className}, expected ${cls}`);
  }
  return o;
}

function refs(o: ParsedObject, id: string): [string, string][] {
  const entries = Object.entries(jsonBody(o, id));
  for (const [name, ref] of entries) {
    if (typeof ref !== "string" || !o.childIds.includes(ref)) {
      throw new ObjectFormatError(`${o.className} ${id}: "${name}" is not one of its children`);
    }
  }
  return entries as [string, string][];
}

function inflateArray(id: string, objects: Map<string, ParsedObject>, what: string): NamedTensor {
  const o = get(objects, id, "Array");
  const meta = jsonBody(o, id);
  const { dtype, shape, stype, arraychunk_ids: chunkIds } = meta;
  if (stype !== "numpy.ndarray") {
    throw new ObjectFormatError(`${what}: stype ${JSON.stringify(stype)}, expected numpy.ndarray`);
  }
  if (dtype !== "float32") {
    throw new ObjectFormatError(
      `${what}: dtype ${JSON.stringify(dtype)}; comigs nodes take float32`,
    );
  }
  if (!Array.isArray(chunkIds) || !Array.isArray(shape)) {
    throw new ObjectFormatError(`${what}: Array body lacks shape or arraychunk_ids`);
  }
  const parts = chunkIds.map((i) => {
    const chunkId = o.childIds[i as number];
    if (chunkId === undefined) {
      throw new ObjectFormatError(`${what}: chunk index ${i} out of range`);
    }
    return get(objects, chunkId, "ArrayChunk").body;
  });
  const npy = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (npy.set(p, at), at + p.length), 0);
  const tensor = decodeNpyF32(npy, what);
  if (tensor.shape.join() !== shape.join()) {
    throw new ObjectFormatError(`${what}: .npy shape [${tensor.shape}] ≠ Array shape [${shape}]`);
  }
  return tensor;
}

/** What a reply carries: the shared tensors (train), metrics (train, evaluate), a ConfigRecord. */
export interface ReplyRecords {
  arrays?: Map<string, NamedTensor> | null;
  metrics?: Map<string, MetricValue>;
  config?: Map<string, ConfigOut>;
}

/** The records of a reply, in a RecordDict: {"arrays"?, "metrics"?, "config"?} (FedAvg's keys). */
export async function replyContent(
  { arrays, metrics, config }: ReplyRecords,
): Promise<FlowerObject> {
  const records: [string, FlowerObject][] = [];
  if (arrays) {
    const entries: [string, FlowerObject][] = [];
    for (const [name, t] of arrays) {
      entries.push([name, await arrayObject("float32", t.shape, encodeNpyF32(t))]);
    }
    records.push(["arrays", await refsObject("ArrayRecord", entries)]);
  }
  if (metrics) {
    records.push(["metrics", await makeObject("MetricRecord", [], encodeMetricRecord(metrics))]);
  }
  if (config) {
    records.push(["config", await makeObject("ConfigRecord", [], encodeConfigRecord(config))]);
  }
  return await refsObject("RecordDict", records);
}

/** The Message object: metadata (without its own id) and error in the body, content as child. */
export async function messageObject(
  metadata: Metadata,
  content: FlowerObject | null,
  error?: MessageError,
): Promise<FlowerObject> {
  const body = encodeMessage({
    metadata: { ...metadata, messageId: "" },
    hasContent: false,
    error,
  });
  return await makeObject("Message", content ? [content] : [], body);
}
