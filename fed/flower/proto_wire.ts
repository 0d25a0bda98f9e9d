// The protobuf wire format, by hand, for the few Flower messages a node exchanges (fleet.ts).
// flwr's wheel ships only compiled descriptors (no .proto files) and the node needs ~20 small
// messages, so a ~150-line codec is smaller than vendoring reconstructed protos plus a runtime
// and its code generator. Writers emit fields in field-number order and skip proto3 defaults,
// which is what Python's `SerializeToString(deterministic=True)` does for these messages: the
// bytes (and so the object ids hashed from them) match Flower's own.

export class ProtoError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtoError";
  }
}

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_BYTES = 2;
const WIRE_FIXED32 = 5;
const UTF8 = new TextEncoder();
const UTF8_DECODE = new TextDecoder("utf-8", { fatal: true });
const U64_MAX = (1n << 64n) - 1n;

/** Appends fields to a growing buffer. Call the methods in field-number order. */
export class ProtoWriter {
  #chunks: Uint8Array[] = [];
  #scratch: number[] = [];

  #varint(value: bigint): void {
    if (value < 0n || value > U64_MAX) throw new ProtoError(`varint ${value} out of uint64 range`);
    do {
      let byte = Number(value & 0x7fn);
      value >>= 7n;
      if (value !== 0n) byte |= 0x80;
      this.#scratch.push(byte);
    } while (value !== 0n);
  }
  #flush(): void {
    if (this.#scratch.length) this.#chunks.push(Uint8Array.from(this.#scratch));
    this.#scratch = [];
  }
  #tag(field: number, wire: number): void {
    this.#varint(BigInt((field << 3) | wire));
  }

  // Scalars equal to proto3's default are skipped unless `present` (a `oneof` member or an
  // `optional` field, whose presence is itself information).
  uint64(field: number, value: bigint | number, present = false): this {
    if (BigInt(value) === 0n && !present) return this;
    this.#tag(field, WIRE_VARINT);
    this.#varint(BigInt(value));
    return this;
  }
  sint64(field: number, value: bigint | number, present = false): this {
    const v = BigInt(value);
    if (v === 0n && !present) return this;
    this.#tag(field, WIRE_VARINT);
    this.#varint(zigzag(v));
    return this;
  }
  bool(field: number, value: boolean, present = false): this {
    return this.uint64(field, value ? 1n : 0n, present);
  }
  double(field: number, value: number, present = false): this {
    // proto3 skips +0 only (Python's serializer writes -0.0, whose bits are not all zero).
    if (value === 0 && !Object.is(value, -0) && !present) return this;
    this.#tag(field, WIRE_FIXED64);
    this.#flush();
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setFloat64(0, value, true);
    this.#chunks.push(bytes);
    return this;
  }
  string(field: number, value: string, present = false): this {
    return this.bytes(field, UTF8.encode(value), present);
  }
  bytes(field: number, value: Uint8Array, present = false): this {
    return value.length === 0 && !present ? this : this.message(field, value);
  }
  /** An embedded message (or bytes) written even when empty: presence matters for messages. */
  message(field: number, value: Uint8Array): this {
    this.#tag(field, WIRE_BYTES);
    this.#varint(BigInt(value.length));
    this.#flush();
    this.#chunks.push(value);
    return this;
  }
  packedDoubles(field: number, values: readonly number[]): this {
    if (values.length === 0) return this;
    const bytes = new Uint8Array(8 * values.length);
    const view = new DataView(bytes.buffer);
    values.forEach((v, i) => view.setFloat64(8 * i, v, true));
    return this.message(field, bytes);
  }
  packedVarints(field: number, values: readonly bigint[], signed: boolean): this {
    if (values.length === 0) return this;
    const inner = new ProtoWriter();
    for (const v of values) inner.#varint(signed ? zigzag(v) : v);
    return this.message(field, inner.finish());
  }
  finish(): Uint8Array {
    this.#flush();
    const total = this.#chunks.reduce((n, c) => n + c.length, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const c of this.#chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}

function zigzag(v: bigint): bigint {
  return v >= 0n ? v << 1n : ((-v) << 1n) - 1n;
}

/** One decoded field: a varint as bigint, fixed64/fixed32 as raw bytes, length-delimited bytes. */
export interface WireField {
  field: number;
  wire: number;
  varint: bigint;
  bytes: Uint8Array;
}

/** Splits a message into its fields (unknown ones included; readers ignore what they skip). */
export function readFields(buf: Uint8Array, what: string): WireField[] {
  const fields: WireField[] = [];
  let at = 0;
  const varint = (): bigint => {
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (at >= buf.length) throw new ProtoError(`${what}: truncated varint`);
      const byte = buf[at++];
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result & U64_MAX;
    }
    throw new ProtoError(`${what}: varint longer than 10 bytes`);
  };
  const take = (n: number): Uint8Array => {
    if (at + n > buf.length) throw new ProtoError(`${what}: field runs past the end`);
    const out = buf.subarray(at, at + n);
    at += n;
    return out;
  };
  while (at < buf.length) {
    const tag = varint();
    const field = Number(tag >> 3n);
    const wire = Number(tag & 7n);
    const f: WireField = { field, wire, varint: 0n, bytes: EMPTY };
    if (wire === WIRE_VARINT) f.varint = varint();
    else if (wire === WIRE_FIXED64) f.bytes = take(8);
    else if (wire === WIRE_BYTES) f.bytes = take(Number(varint()));
    else if (wire === WIRE_FIXED32) f.bytes = take(4);
    else throw new ProtoError(`${what}: unsupported wire type ${wire} (field ${field})`);
    fields.push(f);
  }
  return fields;
}

const EMPTY = new Uint8Array(0);

/** Typed access to the last occurrence of each field (proto3's rule for singular fields). */
export class ProtoReader {
  readonly fields: WireField[];
  constructor(buf: Uint8Array, readonly what: string) {
    this.fields = readFields(buf, what);
  }
  #last(field: number, wire: number): WireField | undefined {
    let found: WireField | undefined;
    for (const f of this.fields) {
      if (f.field !== field) continue;
      if (f.wire !== wire) {
        throw new ProtoError(`${this.what}: field ${field} has wire type ${f.wire}, not ${wire}`);
      }
      found = f;
    }
    return found;
  }
  has(field: number): boolean {
    return this.fields.some((f) => f.field === field);
  }
  uint64(field: number): bigint {
    return this.#last(field, WIRE_VARINT)?.varint ?? 0n;
  }
  sint64(field: number): bigint {
    const v = this.uint64(field);
    return v & 1n ? -((v + 1n) >> 1n) : v >> 1n;
  }
  bool(field: number): boolean {
    return this.uint64(field) !== 0n;
  }
  double(field: number): number {
    const f = this.#last(field, WIRE_FIXED64);
    return f ? new DataView(f.bytes.buffer, f.bytes.byteOffset, 8).getFloat64(0, true) : 0;
  }
  bytes(field: number): Uint8Array {
    return this.#last(field, WIRE_BYTES)?.bytes ?? EMPTY;
  }
  string(field: number): string {
    try {
      return UTF8_DECODE.decode(this.bytes(field));
    } catch {
      throw new ProtoError(`${this.what}: field ${field} is not valid UTF-8`);
    }
  }
  /** Every occurrence of a length-delimited field (repeated messages, strings, bytes). */
  repeated(field: number): Uint8Array[] {
    return this.fields.filter((f) => f.field === field && f.wire === WIRE_BYTES).map((f) =>
      f.bytes
    );
  }
  repeatedStrings(field: number): string[] {
    return this.repeated(field).map((b) => UTF8_DECODE.decode(b));
  }
  /** A repeated double, packed or not. */
  doubles(field: number): number[] {
    const out: number[] = [];
    for (const f of this.fields) {
      if (f.field !== field) continue;
      const b = f.bytes;
      if (f.wire !== WIRE_BYTES && f.wire !== WIRE_FIXED64) {
        throw new ProtoError(`${this.what}: field ${field} is not a double`);
      }
      if (b.length % 8) throw new ProtoError(`${this.what}: packed doubles of ${b.length} bytes`);
      const view = new DataView(b.buffer, b.byteOffset, b.length);
      for (let i = 0; i < b.length; i += 8) out.push(view.getFloat64(i, true));
    }
    return out;
  }
  /** A repeated varint (int32, uint64, sint64, bool), packed or not. */
  varints(field: number, signed: boolean): bigint[] {
    const out: bigint[] = [];
    for (const f of this.fields) {
      if (f.field !== field) continue;
      if (f.wire === WIRE_VARINT) out.push(f.varint);
      else if (f.wire === WIRE_BYTES) {
        // A packed run: bare varints back to back.
        let at = 0;
        const b = f.bytes;
        while (at < b.length) {
          let v = 0n;
          let shift = 0n;
          for (;;) {
            if (at >= b.length) throw new ProtoError(`${this.what}: truncated packed varint`);
            const byte = b[at++];
            v |= BigInt(byte & 0x7f) << shift;
            shift += 7n;
            if ((byte & 0x80) === 0) break;
          }
          out.push(v & U64_MAX);
        }
      } else throw new ProtoError(`${this.what}: field ${field} is not a varint`);
    }
    return signed ? out.map((v) => v & 1n ? -((v + 1n) >> 1n) : v >> 1n) : out;
  }
}
