// ConfigRecord and MetricRecord bodies (flwr/proto/recorddict.proto in flwr 1.42.0): a list of
// {key, value} items whose value is a `oneof` of double / sint64 / uint64 / bool / string /
// bytes or a list of one of them. Python writes an int as sint64 (uint64 only above int64's
// range) and a float as double; we read every case and write the same way.

import { ProtoError, ProtoReader, ProtoWriter } from "./proto_wire.ts";

/** A ConfigRecord value as plain data: integers beyond 2^53 stay bigint to keep every digit. */
export type ConfigScalar = number | bigint | boolean | string | Uint8Array;
export type ConfigValue = ConfigScalar | ConfigScalar[];

const I64_MAX = (1n << 63n) - 1n;

function intValue(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(v)
    : v;
}

/** Reads the `oneof value` of a ConfigRecordValue or MetricRecordValue. */
function decodeValue(buf: Uint8Array, what: string): ConfigValue {
  const r = new ProtoReader(buf, what);
  const last = r.fields.at(-1);
  if (!last) throw new ProtoError(`${what}: no value set`);
  const list = (field: number) => new ProtoReader(r.bytes(field), what);
  switch (last.field) {
    case 1:
      return r.double(1);
    case 2:
      return intValue(r.sint64(2));
    case 3:
      return intValue(r.uint64(3));
    case 4:
      return r.bool(4);
    case 5:
      return r.string(5);
    case 6:
      return r.bytes(6);
    case 21:
      return list(21).doubles(1);
    case 22:
      return list(22).varints(1, true).map(intValue);
    case 23:
      return list(23).varints(1, false).map(intValue);
    case 24:
      return list(24).varints(1, false).map((v) => v !== 0n);
    case 25:
      return list(25).repeatedStrings(1);
    case 26:
      return list(26).repeated(1);
    default:
      throw new ProtoError(`${what}: unknown value field ${last.field}`);
  }
}

/** A ConfigRecord or MetricRecord body → {key: value}, in the record's order. */
export function decodeValueRecord(body: Uint8Array, what: string): Map<string, ConfigValue> {
  const out = new Map<string, ConfigValue>();
  for (const item of new ProtoReader(body, what).repeated(1)) {
    const r = new ProtoReader(item, what);
    out.set(r.string(1), decodeValue(r.bytes(2), `${what} "${r.string(1)}"`));
  }
  return out;
}

/** A MetricRecord's values: an integer count or a float measurement (or a list of floats). */
export type MetricValue = { int: bigint } | number | number[];

/** A ConfigRecord value we send: text, a flag, or a MetricRecord's kind of number. */
export type ConfigOut = string | boolean | MetricValue;

/** A MetricRecord body, written as Python writes `MetricRecord({...})`. */
export function encodeMetricRecord(metrics: Map<string, MetricValue>): Uint8Array {
  return encodeValueRecord(metrics);
}

/** A ConfigRecord body, written as Python writes `ConfigRecord({...})`. */
export function encodeConfigRecord(values: Map<string, ConfigOut>): Uint8Array {
  return encodeValueRecord(values);
}

function encodeValueRecord(values: Map<string, ConfigOut>): Uint8Array {
  const w = new ProtoWriter();
  for (const [key, value] of values) {
    const v = new ProtoWriter();
    if (typeof value === "number") v.double(1, value, true);
    else if (typeof value === "boolean") v.bool(4, value, true);
    else if (typeof value === "string") v.string(5, value, true);
    else if (Array.isArray(value)) {
      v.message(21, new ProtoWriter().packedDoubles(1, value).finish());
    } else if (value.int > I64_MAX) v.uint64(3, value.int, true);
    else v.sint64(2, value.int, true);
    w.message(1, new ProtoWriter().string(1, key).message(2, v.finish()).finish());
  }
  return w.finish();
}
