// Client sampling: a round's draw depends only on the seed (or the DP key) and the round, so it
// repeats exactly (resume-safe); different rounds draw differently; K = N is every client in
// order; and over many rounds each client is drawn at the rate K/N (fixed) or q (Poisson), within
// binomial tolerance.
import { seedKey } from "../../fed/noise.ts";
import { poissonSampleClients, sampleClients } from "../../fed/sampling.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";

Deno.test("sampling: K of N from seed and round only; K = N is everyone in order", () => {
  const draws = Array.from({ length: 50 }, (_, round) => sampleClients(7, round, 10, 3));
  // The same call again (a resumed run), in another order: the same draws.
  for (let round = 49; round >= 0; round--) {
    assertEquals(sampleClients(7, round, 10, 3), draws[round]);
  }
  for (const draw of draws) {
    assertEquals(draw.length, 3);
    assertEquals(new Set(draw).size, 3);
    assert(draw.every((id, i) => id >= 0 && id < 10 && (i === 0 || draw[i - 1] < id)), `${draw}`);
  }
  // Rounds differ: among 50 rounds of C(10, 3) = 120 possible draws, at least 25 distinct ones
  // (a draw repeating the previous round's is as likely as 1 in 120).
  assert(new Set(draws.map(String)).size >= 25);
  assert(draws.some((d, r) => r > 0 && String(d) !== String(draws[r - 1])));
  // Another seed, other draws.
  assert(draws.some((d, r) => String(d) !== String(sampleClients(8, r, 10, 3))));
  for (const round of [0, 1, 99]) assertEquals(sampleClients(7, round, 6, 6), [0, 1, 2, 3, 4, 5]);
  assertEquals(sampleClients(3, 5, 1, 1), [0]);
  assertThrows(() => sampleClients(7, 0, 4, 5), RangeError, "--clients-per-round 5: choose 1..4");
  assertThrows(() => sampleClients(7, 0, 4, 0), RangeError, "--clients-per-round 0");
  assertThrows(() => sampleClients(7, -1, 4, 2), RangeError, "round -1");
});

Deno.test("sampling: every client is drawn at rate K/N over 20000 rounds", () => {
  const rounds = 20000, n = 7, k = 3;
  const counts = new Array(n).fill(0);
  for (let round = 0; round < rounds; round++) {
    for (const id of sampleClients(11, round, n, k)) counts[id]++;
  }
  // Each count is Binomial(rounds, k/n): SE √(rounds·p(1−p)) = 70; 5 SE.
  const p = k / n, se = Math.sqrt(rounds * p * (1 - p));
  counts.forEach((c, id) => assert(Math.abs(c - rounds * p) < 5 * se, `client ${id}: ${c}`));
});

Deno.test("sampling: Poisson draws from the secret key and round only, at rate q", () => {
  const key = seedKey(12);
  const rounds = 5000, n = 13, q = 0.3;
  const counts = new Array(n).fill(0);
  let sizes = 0;
  for (let round = 0; round < rounds; round++) {
    const draw = poissonSampleClients(key, round, n, q);
    assertEquals(poissonSampleClients(key, round, n, q), draw);
    assert(draw.every((id, i) => id < n && (i === 0 || draw[i - 1] < id)));
    for (const id of draw) counts[id]++;
    sizes += draw.length;
  }
  const se = Math.sqrt(rounds * q * (1 - q));
  counts.forEach((c, id) => assert(Math.abs(c - rounds * q) < 5 * se, `client ${id}: ${c}`));
  // Clients are drawn independently: the total is Binomial(rounds·n, q).
  assert(Math.abs(sizes - rounds * n * q) < 5 * Math.sqrt(rounds * n * q * (1 - q)));
  // Another key draws differently; rate 1 draws everyone.
  const other = Array.from(
    { length: 20 },
    (_, r) => String(poissonSampleClients(seedKey(13), r, n, q)),
  );
  assert(other.some((d, r) => d !== String(poissonSampleClients(key, r, n, q))));
  assertEquals(poissonSampleClients(key, 3, 20, 1), Array.from({ length: 20 }, (_, i) => i));
  assertThrows(() => poissonSampleClients(key, 0, 4, 0), RangeError, "sampling rate 0");
});
