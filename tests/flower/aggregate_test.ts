// The ServerApp's aggregation (flower/comigs_flower/aggregate.py, run by the pinned Python in
// flower/.venv through tests/flower/flower_aggregate.py) against fed/aggregate.ts on the same
// replies: uniform and token-weighted means (one claim inflated), the coordinate-wise median and
// the trimmed mean at several fractions, for 1 to 9 replies, on values where float32 and float64
// arithmetic, summation order or the order of −0 and +0 would show: the results must be equal
// bit for bit. (federation_test.ts and guard_test.ts check the same through a real SuperLink.)

import { aggregate, type Aggregation } from "../../fed/aggregate.ts";
import type { Message } from "../../fed/message.ts";
import { assertEquals } from "../assert.ts";
import { Rng } from "../util.ts";
import { flowerPython, flowerTest } from "./harness.ts";

const hex = (data: Float32Array) =>
  Array.from(
    new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    (x) => x.toString(16).padStart(2, "0"),
  ).join("");

/** n replies: tensor a (40 values) with ties, ±0, cancellation and far-apart magnitudes up to
 * float32's largest; b [1, 5] tiny. */
function replies(n: number, seed: number): Message[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, (_, c) => {
    const a = Float32Array.from(rng.normal(40, 3));
    a[0] = 1; // every reply agrees (ties)
    a[1] = c % 2; // two-valued ties
    a[2] = (c - 1) * 1e30; // magnitudes far apart
    a[3] = c === 1 ? -0 : 0; // a −0 among +0s: which one is "the middle" decides the sign
    a[4] = c === 0 ? 0 : -0;
    // −2⁶⁰, 100, 2⁶⁰: summed from the smallest up the float64 sum is 128, from the largest down
    // 0 (the order of a sum shows).
    a[5] = [-(2 ** 60), 100, 2 ** 60][c] ?? 0;
    a[6] = 3e38 - c * 1e36; // two of them overflow a float32 sum
    const b = Float32Array.from(rng.uniform(5, -1e-3, 1e-3));
    // Claims 1000 + c, one of them inflated (capped at the upper median by `tokens`).
    const trainTokens = c === 2 ? 1e15 : 1000 + c;
    return {
      round: 1,
      sender: c,
      trainTokens,
      tensors: new Map([
        ["a", { shape: [a.length], data: a }],
        ["b", { shape: [1, b.length], data: b }],
      ]),
    };
  });
}

interface Case {
  aggregation: Aggregation;
  trim: number;
  messages: Message[];
}

/** Each case's aggregate as the ServerApp's Python computes it, {name: hex of float32}. */
async function pythonAggregates(cases: Case[]): Promise<Record<string, string>[]> {
  const input = cases.map(({ aggregation, trim, messages }) => ({
    aggregation,
    trim,
    claims: messages.map((m) => m.trainTokens),
    replies: messages.map((m) =>
      Object.fromEntries(
        [...m.tensors].map(([name, t]) => [name, { shape: t.shape, f32: hex(t.data) }]),
      )
    ),
  }));
  return await flowerPython("flower_aggregate.py", input);
}

flowerTest(
  "flower aggregate: the ServerApp's four aggregations equal fed/aggregate.ts",
  async () => {
    const cases: Case[] = [];
    for (let n = 1; n <= 9; n++) {
      const messages = replies(n, 200 + n);
      cases.push({ aggregation: "uniform", trim: 0.25, messages });
      cases.push({ aggregation: "tokens", trim: 0.25, messages });
      cases.push({ aggregation: "median", trim: 0.25, messages });
      for (const trim of [0, 0.1, 0.2, 0.25, 0.3, 0.49]) {
        cases.push({ aggregation: "trimmed-mean", trim, messages });
      }
    }
    const python = await pythonAggregates(cases);
    for (const [i, { aggregation, trim, messages }] of cases.entries()) {
      const ours = aggregate(messages, aggregation, { trim });
      for (const [name, t] of ours) {
        assertEquals(
          python[i][name],
          hex(t.data),
          `${aggregation} (trim ${trim}) of ${messages.length} replies, tensor ${name}`,
        );
      }
    }
  },
);
