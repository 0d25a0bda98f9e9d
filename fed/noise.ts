// Secret randomness for differential privacy, from the ChaCha20 stream cipher (RFC 8439) used as a
// counter-mode generator: anyone who could predict the noise could subtract it (and anyone who
// knew which clients a round sampled would get no amplification from sampling), so it comes from
// a cryptographic generator keyed by 256 random bits (crypto.getRandomValues) in a real run, and
// by a fixed key in tests. Every output depends only on the key, a stream number and a counter,
// so the whole state of the Gaussian noise is {key, drawn}: written to the resume file, it
// continues the same stream bit for bit. (That state is as secret as the clients' raw updates:
// with the key, the noise can be removed.)
//
// Each 64-byte block gives eight 53-bit uniforms; the noise pairs them by Box–Muller into eight
// normals (cos and sin of each pair). Deno's V8 takes Math.log/cos/sin from LLVM's libc, which
// rounds them correctly (checked on 10⁵ noise arguments against 60-digit values), so the same
// state gives the same bits wherever Deno runs, and the ServerApp's Python port
// (flower/comigs_flower/noise.py, with correctly rounded log/cos/sin) gives them too.

/** What a resumed run needs to continue the noise exactly; JSON-safe. */
export interface NoiseState {
  /** The 256-bit ChaCha20 key, 64 hex digits. */
  key: string;
  /** Normals drawn so far. */
  drawn: number;
}

const SIGMA = [0x61707865, 0x3320646e, 0x79622d32, 0x6b206574]; // "expand 32-byte k"
/** 53-bit uniforms per block (two words each). */
export const UNIFORMS_PER_BLOCK = 8;
const TWO_POW_32 = 4294967296;
const TWO_POW_53 = 9007199254740992;

function quarterRound(x: Uint32Array, a: number, b: number, c: number, d: number): void {
  x[a] += x[b];
  x[d] ^= x[a];
  x[d] = (x[d] << 16) | (x[d] >>> 16);
  x[c] += x[d];
  x[b] ^= x[c];
  x[b] = (x[b] << 12) | (x[b] >>> 20);
  x[a] += x[b];
  x[d] ^= x[a];
  x[d] = (x[d] << 8) | (x[d] >>> 24);
  x[c] += x[d];
  x[b] ^= x[c];
  x[b] = (x[b] << 7) | (x[b] >>> 25);
}

/**
 * The ChaCha20 block function (RFC 8439 §2.3): 16 output words from the 8 key words and the 4
 * words after them (RFC 8439: block counter, then a 96-bit nonce).
 */
export function chacha20Block(key: Uint32Array, counterAndNonce: ArrayLike<number>): Uint32Array {
  const input = new Uint32Array(16);
  input.set(SIGMA, 0);
  input.set(key, 4);
  input.set(Array.from(counterAndNonce), 12);
  const x = input.slice();
  for (let round = 0; round < 10; round++) {
    quarterRound(x, 0, 4, 8, 12);
    quarterRound(x, 1, 5, 9, 13);
    quarterRound(x, 2, 6, 10, 14);
    quarterRound(x, 3, 7, 11, 15);
    quarterRound(x, 0, 5, 10, 15);
    quarterRound(x, 1, 6, 11, 12);
    quarterRound(x, 2, 7, 8, 13);
    quarterRound(x, 3, 4, 9, 14);
  }
  for (let i = 0; i < 16; i++) x[i] += input[i];
  return x;
}

/** The stream (ChaCha20 nonce) of each use of a key, so that no two uses share a block. */
export const NOISE_STREAM = 0;
export const CLIENT_DRAW_STREAM = 1;

function parseKey(hex: string): Uint32Array {
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw new Error(`noise state: key "${hex}" is not 64 lowercase hex digits`);
  }
  const key = new Uint32Array(8);
  // Little-endian words, as RFC 8439 reads the key bytes.
  for (let w = 0; w < 8; w++) {
    for (let b = 3; b >= 0; b--) {
      key[w] = (key[w] << 8) | parseInt(hex.slice(8 * w + 2 * b, 8 * w + 2 * b + 2), 16);
    }
  }
  return key;
}

function hexOf(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A fresh key: 256 bits of the operating system's cryptographic randomness, as hex. */
export function secureKey(): string {
  return hexOf(crypto.getRandomValues(new Uint8Array(32)));
}

/** A reproducible key for tests: the seed's 4 bytes (little-endian), then zeros. */
export function seedKey(seed: number): string {
  const bytes = new Uint8Array(32);
  new DataView(bytes.buffer).setUint32(0, seed >>> 0, true);
  return hexOf(bytes);
}

/**
 * The eight 53-bit integers (0 ≤ k < 2^53) of block `counter` of `stream` under `key`. The 64-bit
 * counter fills ChaCha20's words 12–13 and the stream word 14 (word 15 is 0).
 */
function blockIntegers(key: Uint32Array, stream: number, counter: number): Float64Array {
  const words = chacha20Block(key, [
    counter % TWO_POW_32,
    Math.floor(counter / TWO_POW_32),
    stream,
    0,
  ]);
  const out = new Float64Array(UNIFORMS_PER_BLOCK);
  for (let u = 0; u < UNIFORMS_PER_BLOCK; u++) {
    out[u] = (words[2 * u] >>> 5) * 67108864 + (words[2 * u + 1] >>> 6);
  }
  return out;
}

/** Block `counter` of `stream` under `keyHex` as eight uniforms in [0, 1). */
export function secretUniforms(keyHex: string, stream: number, counter: number): Float64Array {
  if (!Number.isSafeInteger(counter) || counter < 0) throw new RangeError(`block ${counter}`);
  return blockIntegers(parseKey(keyHex), stream, counter).map((k) => k / TWO_POW_53);
}

/** N(0, 1) samples, deterministic given the key and the number already drawn. */
export class GaussianNoise {
  readonly #key: Uint32Array;
  readonly #keyHex: string;
  #drawn: number;
  #block = -1;
  readonly #normals = new Float64Array(UNIFORMS_PER_BLOCK);

  private constructor(keyHex: string, drawn: number) {
    if (!Number.isSafeInteger(drawn) || drawn < 0) {
      throw new Error(`noise state: drawn = ${drawn} is not a count`);
    }
    this.#key = parseKey(keyHex);
    this.#keyHex = keyHex;
    this.#drawn = drawn;
  }

  /** A fresh stream under `key` (secureKey() in a real run, seedKey(seed) in tests). */
  static fromKey(key: string): GaussianNoise {
    return new GaussianNoise(key, 0);
  }

  /** Continues the stream a saved `state()` describes. */
  static restore(state: NoiseState): GaussianNoise {
    return new GaussianNoise(state.key, state.drawn);
  }

  state(): NoiseState {
    return { key: this.#keyHex, drawn: this.#drawn };
  }

  /** The next N(0, 1) sample. */
  next(): number {
    const block = Math.floor(this.#drawn / UNIFORMS_PER_BLOCK);
    if (block !== this.#block) this.#fill(block);
    return this.#normals[this.#drawn++ % UNIFORMS_PER_BLOCK];
  }

  /** Block b's eight normals: each pair's u in (0, 1] (the log stays finite), v in [0, 1). */
  #fill(block: number): void {
    const k = blockIntegers(this.#key, NOISE_STREAM, block);
    for (let p = 0; p < UNIFORMS_PER_BLOCK / 2; p++) {
      const radius = Math.sqrt(-2 * Math.log((k[2 * p] + 1) / TWO_POW_53));
      const angle = (2 * Math.PI * k[2 * p + 1]) / TWO_POW_53;
      this.#normals[2 * p] = radius * Math.cos(angle);
      this.#normals[2 * p + 1] = radius * Math.sin(angle);
    }
    this.#block = block;
  }
}
