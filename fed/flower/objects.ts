// Flower's content-addressed objects (flwr 1.42.0, flwr/supercore/inflatable/): every part of a
// message is "deflated" to `<Class> <comma-joined child ids> <body length>\0<body>` and named by
// the hex SHA-256 of those bytes. The bodies of Message, ConfigRecord and MetricRecord are
// protobuf; RecordDict, ArrayRecord and Array are JSON written as Python's `json.dumps` writes
// it (", " and ": " separators, non-ASCII escaped), so our ids equal Flower's byte for byte.
// Arrays are cut into ArrayChunks of at most 5 MiB (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE).

import type { ObjectTree } from "./fleet.ts";

export const MAX_ARRAY_CHUNK_BYTES = 5 * 1024 * 1024;

export class ObjectFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ObjectFormatError";
  }
}

/** A deflated object with its (unique, ordered) children: what a node pushes. */
export interface FlowerObject {
  id: string;
  content: Uint8Array;
  children: FlowerObject[];
}

const UTF8 = new TextEncoder();

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  // Our buffers are never SharedArrayBuffers; WebCrypto's types just cannot know that.
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>),
  );
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** `add_header_to_object_body` + `get_object_id`. Children repeat-free, in first-seen order. */
export async function makeObject(
  className: string,
  children: FlowerObject[],
  body: Uint8Array,
): Promise<FlowerObject> {
  const unique = uniqueById(children);
  const head = UTF8.encode(`${className} ${unique.map((c) => c.id).join(",")} ${body.length}`);
  const content = new Uint8Array(head.length + 1 + body.length);
  content.set(head, 0);
  content[head.length] = 0;
  content.set(body, head.length + 1);
  return { id: await sha256Hex(content), content, children: unique };
}

function uniqueById(objects: FlowerObject[]): FlowerObject[] {
  const seen = new Map<string, FlowerObject>();
  for (const o of objects) if (!seen.has(o.id)) seen.set(o.id, o);
  return [...seen.values()];
}

/** Python's `json.dumps` of a string: ASCII only, lowercase \u escapes as Python writes them. */
export function pyJsonString(s: string): string {
  return JSON.stringify(s).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** Python's `json.dumps` of a flat {str: str} dict (RecordDict and ArrayRecord bodies). */
export function pyJsonRefs(entries: [string, string][]): string {
  return `{${entries.map(([k, v]) => `${pyJsonString(k)}: ${pyJsonString(v)}`).join(", ")}}`;
}

export function objectTree(o: FlowerObject): ObjectTree {
  return { objectId: o.id, children: o.children.map(objectTree) };
}

/** Every object of a tree, children before parents (Flower's push order). */
export function postOrder(o: FlowerObject, out: FlowerObject[] = []): FlowerObject[] {
  for (const c of o.children) postOrder(c, out);
  out.push(o);
  return out;
}

// ---- building (deflate) ----

export async function arrayObject(
  dtype: string,
  shape: readonly number[],
  data: Uint8Array,
): Promise<FlowerObject> {
  const chunks: FlowerObject[] = [];
  for (let start = 0; start < data.length; start += MAX_ARRAY_CHUNK_BYTES) {
    const slice = data.subarray(start, Math.min(start + MAX_ARRAY_CHUNK_BYTES, data.length));
    chunks.push(await makeObject("ArrayChunk", [], slice));
  }
  const uniqueIds = uniqueById(chunks).map((c) => c.id);
  const body = `{"dtype": ${pyJsonString(dtype)}, "shape": [${shape.join(", ")}], ` +
    `"stype": "numpy.ndarray", "arraychunk_ids": [${
      chunks.map((c) => uniqueIds.indexOf(c.id)).join(", ")
    }]}`;
  return await makeObject("Array", chunks, UTF8.encode(body));
}

/** An ArrayRecord, RecordDict: a JSON map from names to child ids. */
export async function refsObject(
  className: "ArrayRecord" | "RecordDict",
  entries: [string, FlowerObject][],
): Promise<FlowerObject> {
  const body = pyJsonRefs(entries.map(([name, o]) => [name, o.id]));
  return await makeObject(className, entries.map(([, o]) => o), UTF8.encode(body));
}

// ---- reading (inflate) ----

/** A pulled object, parsed: its class, its children's ids (as in its head), and its body. */
export interface ParsedObject {
  className: string;
  childIds: string[];
  body: Uint8Array;
}

const UTF8_DECODE = new TextDecoder("utf-8", { fatal: true });

/** Checks the id is the content's SHA-256 and the head is well formed (`validate_object_content`). */
export async function parseObject(id: string, content: Uint8Array): Promise<ParsedObject> {
  const fail = (m: string): never => {
    throw new ObjectFormatError(`object ${id}: ${m}`);
  };
  if ((await sha256Hex(content)) !== id) fail("content does not hash to its id");
  const split = content.indexOf(0);
  if (split < 0) fail("no head/body divider");
  const parts = UTF8_DECODE.decode(content.subarray(0, split)).split(" ");
  if (parts.length !== 3) fail("head is not '<class> <children> <length>'");
  const [className, children, length] = parts;
  const body = content.subarray(split + 1);
  if (Number(length) !== body.length) fail(`body is ${body.length} bytes, head says ${length}`);
  const childIds = children === "" ? [] : children.split(",");
  if (childIds.some((c) => !/^[0-9a-f]{64}$/.test(c))) fail("a child id is not a SHA-256 hex");
  return { className, childIds, body };
}

/** Parses a JSON object body (RecordDict, ArrayRecord, Array). */
export function jsonBody(o: ParsedObject, id: string): Record<string, unknown> {
  try {
    const value = JSON.parse(UTF8_DECODE.decode(o.body));
    if (value && typeof value === "object" && !Array.isArray(value)) return value;
  } catch { /* reported below */ }
  throw new ObjectFormatError(`object ${id} (${o.className}): body is not a JSON object`);
}
