// The robust aggregators against float64 references (tests/ref/robust_aggregate.ts): coordinate-
// wise median and trimmed mean on awkward client counts and lengths, token weights with inflated
// claims clamped, the trim count's rounding, and the quorum rule. Each aggregate is one float32
// rounding of a float64 value computed in the same order as the reference, so they must agree
// bit for bit.
import { aggregate, cappedClaims, quorumShortfall, trimCount } from "../../fed/aggregate.ts";
import type { Message } from "../../fed/message.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { cappedTokenMeanRef, medianRef, trimmedMeanRef } from "../ref/robust_aggregate.ts";
import { Rng } from "../util.ts";

function message(sender: number, trainTokens: number, a: Float32Array, b: Float32Array): Message {
  return {
    round: 1,
    sender,
    trainTokens,
    tensors: new Map([["a", { shape: [a.length], data: a }], ["b", {
      shape: [1, b.length],
      data: b,
    }]]),
  };
}

/** n clients' tensors a (37 values) and b (5), with ties and a wide range of magnitudes. */
function clients(n: number, seed: number, claims?: number[]): Message[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, (_, c) => {
    const a = Float32Array.from(rng.normal(37, 3));
    a[0] = 1; // a coordinate where every client agrees (ties)
    a[1] = c % 2; // two-valued ties
    a[2] = (c - 1) * 1e30; // magnitudes far apart
    const b = Float32Array.from(rng.uniform(5, -1e-3, 1e-3));
    return message(c, claims?.[c] ?? 1000 + c, a, b);
  });
}

/** The reference applied to every coordinate, rounded to float32. */
function columnwise(messages: Message[], name: string, f: (values: number[]) => number) {
  const length = messages[0].tensors.get(name)!.data.length;
  return Float32Array.from(
    { length },
    (_, i) => f(messages.map((m) => m.tensors.get(name)!.data[i])),
  );
}

Deno.test("aggregate: median and trimmed mean equal their float64 references bit for bit", () => {
  for (let n = 1; n <= 9; n++) {
    const messages = clients(n, 100 + n);
    for (const name of ["a", "b"]) {
      assertEquals(
        [...aggregate(messages, "median").get(name)!.data],
        [...columnwise(messages, name, medianRef)],
        `median of ${n}, ${name}`,
      );
      for (const trim of [0, 0.1, 0.2, 0.25, 0.3, 0.49]) {
        assertEquals(
          [...aggregate(messages, "trimmed-mean", { trim }).get(name)!.data],
          [...columnwise(messages, name, (v) => trimmedMeanRef(v, trim))],
          `trimmed mean of ${n} at F = ${trim}, ${name}`,
        );
      }
    }
    assertEquals(aggregate(messages, "median").get("b")!.shape, [1, 5]);
  }
});

Deno.test("aggregate: one client sending 1e30 everywhere cannot drag median or trimmed mean", () => {
  const honest = clients(3, 7);
  const attacker = message(
    3,
    1000,
    new Float32Array(37).fill(1e30),
    new Float32Array(5).fill(-1e30),
  );
  const all = [...honest, attacker];
  for (const [kind, options] of [["median", {}], ["trimmed-mean", { trim: 0.25 }]] as const) {
    const out = aggregate(all, kind, options);
    for (const name of ["a", "b"]) {
      out.get(name)!.data.forEach((x, i) => {
        const values = honest.map((m) => m.tensors.get(name)!.data[i]);
        assert(
          x >= Math.min(...values) && x <= Math.max(...values),
          `${kind} ${name}[${i}] = ${x} is outside the honest clients' [${values}]`,
        );
      });
    }
  }
  // The plain mean, by contrast, is the attacker's.
  assert(aggregate(all, "uniform").get("a")!.data[5] > 1e29);
});

Deno.test("aggregate: a claim of 1e15 tokens weighs no more than the largest honest claim", () => {
  const claims = [1000, 3000, 2000, 1e15];
  assertEquals(cappedClaims(claims), [1000, 3000, 2000, 3000]);
  // Honest claims at or below the upper median are untouched; two clients are never clamped.
  assertEquals(cappedClaims([500, 400, 300]), [400, 400, 300]);
  assertEquals(cappedClaims([100, 300]), [100, 300]);
  assertEquals(cappedClaims([7]), [7]);
  const messages = clients(4, 9, claims);
  for (const name of ["a", "b"]) {
    assertEquals(
      [...aggregate(messages, "tokens").get(name)!.data],
      [...columnwise(messages, name, (v) => cappedTokenMeanRef(v, claims))],
    );
  }
});

Deno.test("aggregate: the trim count is ⌊F·n⌋, never everything; F outside [0, 0.5) is refused", () => {
  assertEquals([3, 4, 7, 8, 11].map((n) => trimCount(n, 0.25)), [0, 1, 1, 2, 2]);
  assertEquals([1, 2, 9, 10].map((n) => trimCount(n, 0.1)), [0, 0, 0, 1]);
  const largest = 0.5 - 2 ** -54; // the largest double below 0.5
  for (let n = 1; n <= 20000; n++) {
    const k = trimCount(n, largest);
    assert(2 * k < n, `F = 0.5 − 2⁻⁵⁴ cuts ${k} of ${n} from each side`);
    assertEquals(k, Math.ceil(n / 2) - 1);
  }
  for (const bad of [0.5, 0.7, -0.1, NaN]) {
    assertThrows(() => trimCount(4, bad), RangeError, "must be in [0, 0.5)");
  }
  assertThrows(() => aggregate(clients(3, 1), "trimmed-mean"), Error, "--trim");
});

Deno.test("quorum: fewer accepted updates than --min-clients keep the previous global", () => {
  assertEquals(quorumShortfall(4, 3, 3), null);
  assertEquals(
    quorumShortfall(4, 1, 2),
    "round 4: 1 accepted update, fewer than the 2 required (min clients); the previous global " +
      "is kept",
  );
  assert(quorumShortfall(0, 0, 1)!.includes("0 accepted updates"));
});
