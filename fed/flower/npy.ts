// `.npy` for float32 arrays: the bytes of Flower's `Array.data` (`np.save(..., allow_pickle=
// False)`, stype "numpy.ndarray"). We write exactly what numpy 2 writes for a C-order '<f4'
// array (format 1.0, header padded with spaces to a multiple of 64 bytes, ending in "\n"), so a
// tensor's object ids equal the ones Flower computes for the same array; we read format 1.0-3.0
// headers and refuse any dtype but little-endian float32 and any Fortran-order array.

import type { NamedTensor } from "../../model/safetensors.ts";

export class NpyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NpyError";
  }
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
const ALIGN = 64;

function shapeRepr(shape: readonly number[]): string {
  // Python's tuple repr: (), (4,), (2, 3).
  return shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
}

export function encodeNpyF32(tensor: NamedTensor): Uint8Array {
  const count = tensor.shape.reduce((a, b) => a * b, 1);
  if (count !== tensor.data.length) {
    throw new NpyError(
      `shape [${tensor.shape}] holds ${count} values, data has ${tensor.data.length}`,
    );
  }
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': ${shapeRepr(tensor.shape)}, }`;
  const prefix = MAGIC.length + 2 + 2; // magic, version 1.0, u16 header length
  header += " ".repeat(ALIGN - ((prefix + header.length + 1) % ALIGN || ALIGN)) + "\n";
  const out = new Uint8Array(prefix + header.length + 4 * count);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[prefix + i] = header.charCodeAt(i);
  const body = new DataView(out.buffer, prefix + header.length);
  for (let i = 0; i < count; i++) body.setFloat32(4 * i, tensor.data[i], true);
  return out;
}

export function decodeNpyF32(bytes: Uint8Array, what: string): NamedTensor {
  const fail = (m: string): never => {
    throw new NpyError(`${what}: ${m}`);
  };
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) fail("not a .npy array");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const [lenBytes, headerLen] = major === 1
    ? [2, view.getUint16(8, true)]
    : major === 2 || major === 3
    ? [4, view.getUint32(8, true)]
    : fail(`unsupported .npy format version ${major}.${bytes[7]}`);
  const start = 8 + lenBytes;
  if (start + headerLen > bytes.length) fail("header runs past the end");
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    fail(`unreadable header ${JSON.stringify(header.trim())}`);
  }
  if (descr !== "<f4") fail(`dtype '${descr}' is not little-endian float32 ('<f4')`);
  if (fortran !== "False") fail("Fortran-order arrays are not supported");
  const shape = shapeText!.split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  if (shape.some((d) => !Number.isInteger(d) || d < 0)) fail(`bad shape (${shapeText})`);
  const count = shape.reduce((a, b) => a * b, 1);
  const dataStart = start + headerLen;
  if (bytes.length - dataStart !== 4 * count) {
    fail(`shape [${shape}] needs ${4 * count} data bytes, found ${bytes.length - dataStart}`);
  }
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++) data[i] = view.getFloat32(dataStart + 4 * i, true);
  return { shape, data };
}
