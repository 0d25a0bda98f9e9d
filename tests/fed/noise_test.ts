// The DP noise generator: ChaCha20 against RFC 8439's test vector and against OpenSSL for our
// counter/stream layout; N(0, 1) samples whose mean, standard deviation, tails and distribution
// (Kolmogorov–Smirnov) are within their statistical tolerances; and a saved state that continues
// the stream bit for bit.
import {
  chacha20Block,
  CLIENT_DRAW_STREAM,
  GaussianNoise,
  NOISE_STREAM,
  secretUniforms,
  secureKey,
  seedKey,
} from "../../fed/noise.ts";
import { logErfc } from "../../fed/special.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";

Deno.test("noise: the ChaCha20 block function matches RFC 8439 §2.3.2", () => {
  const key = new Uint32Array(8);
  // Key bytes 00 01 02 ... 1f, read as little-endian words.
  for (let w = 0; w < 8; w++) {
    key[w] = (4 * w) | ((4 * w + 1) << 8) | ((4 * w + 2) << 16) | ((4 * w + 3) << 24);
  }
  const block = chacha20Block(key, [1, 0x09000000, 0x4a000000, 0]);
  assertEquals([...block], [
    0xe4e7f110,
    0x15593bd1,
    0x1fdd0f50,
    0xc47120a3,
    0xc7f4d1c7,
    0x0368c033,
    0x9aaa2204,
    0x4e6cd4c3,
    0x466482d2,
    0x09aa9f07,
    0x05d7c214,
    0xa2028bd9,
    0xd19c12b5,
    0xb94e16de,
    0xe883d0cb,
    0x4e3c50a2,
  ]);
});

/** The eight uniforms our generator makes of one block's 16 words. */
function uniformsOf(words: number[]): number[] {
  return Array.from(
    { length: 8 },
    (_, u) => ((words[2 * u] >>> 5) * 67108864 + (words[2 * u + 1] >>> 6)) / 2 ** 53,
  );
}

Deno.test("noise: the 64-bit counter and the stream word sit where OpenSSL puts them", () => {
  // Python `cryptography` 51.0.1 (OpenSSL), ChaCha20 with key seedKey(7) and the 16-byte
  // counter‖nonce = (block as u64 LE)‖(stream as u32 LE)‖0: its first 64 bytes of key stream.
  const block2p32plus5 = [
    0x134d3062,
    0x97f95d8e,
    0x48dcbe4b,
    0xcba85379,
    0x3bedf43a,
    0x33edb50c,
    0x3cdf6dee,
    0x0dafd5ab,
    0xdc1e45c4,
    0x899bf36a,
    0xd5753b90,
    0x55c2e667,
    0xc3447d21,
    0x36ffa1d5,
    0x77880727,
    0xec2a2f12,
  ];
  const block3stream1 = [
    0x31796c28,
    0xd6e71972,
    0xcebf5fb6,
    0x5d64d8d6,
    0xe1363ad3,
    0x9ed7b494,
    0xc0dbac45,
    0x81075495,
    0x9ded4324,
    0x397f547a,
    0xb4bc6597,
    0x754d9b9e,
    0x8610ecd0,
    0x2a1d1006,
    0x5d81cef8,
    0x5332388b,
  ];
  const key = seedKey(7);
  assertEquals([...secretUniforms(key, NOISE_STREAM, 2 ** 32 + 5)], uniformsOf(block2p32plus5));
  assertEquals([...secretUniforms(key, CLIENT_DRAW_STREAM, 3)], uniformsOf(block3stream1));
});

/** Φ, the standard normal CDF. */
function normalCdf(x: number): number {
  return 0.5 * Math.exp(logErfc(-x / Math.SQRT2));
}

Deno.test("noise: N(0, 1) within its statistical tolerances over 10⁶ samples", () => {
  const n = 1_000_000;
  const noise = GaussianNoise.fromKey(seedKey(2024));
  const z = new Float64Array(n);
  for (let i = 0; i < n; i++) z[i] = noise.next();
  let sum = 0, squares = 0, tails = 0, pairs = 0;
  for (let i = 0; i < n; i++) {
    sum += z[i];
    squares += z[i] * z[i];
    if (Math.abs(z[i]) > 3) tails++;
    if (i % 2) pairs += z[i - 1] * z[i];
  }
  const mean = sum / n;
  const std = Math.sqrt(squares / n - mean * mean);
  // Each tolerance is 5 standard errors (a false failure has probability < 6e-7): the mean's
  // SE is 1/√n = 1e-3, the sample standard deviation's 1/√(2n) = 7.1e-4, and the fraction
  // beyond 3σ (p = 0.0026998) has SE √(p(1−p)/n) = 5.2e-5. The two normals of a Box–Muller pair
  // must be uncorrelated: the mean of their products has SE 1/√(n/2).
  assert(Math.abs(mean) < 5 / Math.sqrt(n), `mean ${mean}`);
  assert(Math.abs(std - 1) < 5 / Math.sqrt(2 * n), `standard deviation ${std}`);
  assert(Math.abs(pairs / (n / 2)) < 5 / Math.sqrt(n / 2), `pair correlation ${pairs / (n / 2)}`);
  const p = 2 * normalCdf(-3);
  assert(Math.abs(tails / n - p) < 5 * Math.sqrt((p * (1 - p)) / n), `${tails} beyond 3σ`);
  // Kolmogorov–Smirnov: sup |F_n − Φ| ≤ √(ln(2/α)/(2n)) = 2.7e-3 except with probability
  // α = 1e-6 (the DKW inequality).
  z.sort();
  let distance = 0;
  z.forEach((x, i) => {
    const cdf = normalCdf(x);
    distance = Math.max(distance, Math.abs((i + 1) / n - cdf), Math.abs(i / n - cdf));
  });
  assert(distance < Math.sqrt(Math.log(2 / 1e-6) / (2 * n)), `KS distance ${distance}`);
});

Deno.test("noise: a restored state continues the stream bit for bit, mid-block too", () => {
  const noise = GaussianNoise.fromKey(seedKey(5));
  for (let i = 0; i < 13; i++) noise.next();
  const saved = JSON.parse(JSON.stringify(noise.state()));
  assertEquals(saved.drawn, 13);
  const expected = Array.from({ length: 20 }, () => noise.next());
  const resumed = GaussianNoise.restore(saved);
  assertEquals(Array.from({ length: 20 }, () => resumed.next()), expected);
  // Another key is another stream; the same key is the same stream.
  const other = GaussianNoise.fromKey(seedKey(6));
  const again = GaussianNoise.fromKey(seedKey(5));
  const first = Array.from({ length: 4 }, () => again.next());
  assert(first.every((x) => x !== other.next() && Number.isFinite(x)));
  assertEquals(GaussianNoise.fromKey(seedKey(5)).next(), first[0]);
});

Deno.test("noise: real keys are 256 fresh bits; a bad saved state is refused", () => {
  const a = secureKey(), b = secureKey();
  assert(/^[0-9a-f]{64}$/.test(a) && a !== b);
  assertThrows(() => GaussianNoise.restore({ key: "abc", drawn: 0 }), Error, "64 lowercase hex");
  assertThrows(() => GaussianNoise.restore({ key: a, drawn: -1 }), Error, "not a count");
});
