// Differential privacy of the shared update: the clipping bound holds exactly (checked in exact
// rational arithmetic on the float32 values) on inputs where rounding to nearest would break it;
// central DP-FedAvg and local DP equal float64 references replaying the same noise; the central
// noise has standard deviation z·C/K; a local-DP client's update passes validation with
// localDpNormBound; the accountant of each mode is the right sampled Gaussian mechanism.
import { RdpAccountant } from "../../fed/accountant.ts";
import { GaussianNoise, seedKey } from "../../fed/noise.ts";
import {
  centralDpAggregate,
  checkDpSettings,
  clipUpdate,
  dpAccountant,
  type DpSettings,
  localDpNormBound,
  localDpTensors,
} from "../../fed/privacy.ts";
import { shapesOf, validateMessage } from "../../fed/validate_update.ts";
import type { NamedTensor } from "../../model/safetensors.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { Rng } from "../util.ts";

/** x = m·2^e exactly, m an integer, for a finite double. */
function dyadic(x: number): [bigint, number] {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const bits = view.getBigUint64(0);
  const exponent = Number((bits >> 52n) & 0x7ffn);
  const fraction = bits & ((1n << 52n) - 1n);
  const sign = bits >> 63n ? -1n : 1n;
  return exponent === 0
    ? [sign * fraction, -1074]
    : [sign * (fraction | (1n << 52n)), exponent - 1075];
}

/** Whether Σ x² ≤ bound² holds exactly (every value a finite double, scaled by 2^1074). */
function exactNormAtMost(tensors: Iterable<ArrayLike<number>>, bound: number): boolean {
  let sum = 0n;
  for (const values of tensors) {
    for (let i = 0; i < values.length; i++) {
      const [m, e] = dyadic(values[i]);
      sum += (m * m) << BigInt(2 * (e + 1074));
    }
  }
  const [m, e] = dyadic(bound);
  return sum <= (m * m) << BigInt(2 * (e + 1074));
}

/** Updates on which naive clipping (round to nearest) overshoots, and other awkward ones. */
function adversarialUpdates(): [string, Map<string, Float64Array>, number][] {
  const rng = new Rng(77);
  const cases: [string, Map<string, Float64Array>, number][] = [];
  // Equal values: C/√n·1 lands anywhere relative to the float32 grid.
  for (const n of [2, 3, 7, 100, 1000]) {
    for (let k = 0; k < 20; k++) {
      cases.push([
        `${n} ones, C = ${1 + k / 7}`,
        new Map([["a", new Float64Array(n).fill(1)]]),
        1 + k / 7,
      ]);
    }
  }
  // Already within C by a hair, but not float32 values: rounding to nearest goes up.
  const tenths = new Float64Array(100).fill(0.1);
  const norm = Math.sqrt(tenths.reduce((s, x) => s + x * x, 0));
  cases.push(["100 × 0.1, C a hair above the norm", new Map([["a", tenths]]), norm * (1 + 1e-12)]);
  cases.push(["[3, 4], C = 5 exactly", new Map([["a", Float64Array.of(3, 4)]]), 5]);
  cases.push(["one huge value", new Map([["a", Float64Array.of(0, 3e30, 0)]]), 0.7]);
  cases.push(["subnormal floats", new Map([["a", Float64Array.of(1e-45, -3e-44, 2e-40)]]), 1e-41]);
  // float32 values and C half their float64 norm: the scale 1/2 is exact, so nothing is left to
  // round, and wherever the float64 norm came out below the exact one the result overshoots.
  for (let k = 0; k < 20; k++) {
    const values = Float64Array.from(Float32Array.from(rng.normal(50 + k)));
    const computed = Math.sqrt(values.reduce((s, x) => s + x * x, 0));
    cases.push([`${50 + k} float32 values, C = norm/2`, new Map([["a", values]]), computed / 2]);
  }
  for (let k = 0; k < 30; k++) {
    const size = 1 + Math.floor(rng.next() * 3000);
    cases.push([
      `random, ${size} + 17 values`,
      new Map([["a", rng.normal(size, 10 ** (rng.next() * 6 - 3))], ["b", rng.uniform(17)]]),
      10 ** (rng.next() * 4 - 2),
    ]);
  }
  return cases;
}

Deno.test("privacy: clipping holds exactly in float32 where rounding to nearest overshoots", () => {
  let naiveOvershoots = 0;
  for (const [what, update, clip] of adversarialUpdates()) {
    const { update: clipped, norm } = clipUpdate(update, clip);
    assert(exactNormAtMost(clipped.values(), clip), `${what}: clipped norm exceeds ${clip}`);
    const scale = Math.min(1, clip / norm);
    // Only rounding separates the result from scale·Δ, and it stays within float32's relative
    // spacing of 2⁻²³ (a clip that shrank more than that would lose signal).
    for (const [name, values] of update) {
      clipped.get(name)!.forEach((x, i) => {
        const exact = scale * values[i];
        assert(Math.abs(x - exact) <= 2 ** -23 * Math.abs(exact) + 1e-45, `${what}: ${name}[${i}]`);
      });
    }
    // What rounding to nearest would have given: the cases above must make it overshoot, or
    // this test proves nothing.
    const naive = [...update.values()].map((v) => Float32Array.from(v, (x) => scale * x));
    if (!exactNormAtMost(naive, clip)) naiveOvershoots++;
  }
  assert(naiveOvershoots >= 10, `rounding to nearest overshot only ${naiveOvershoots} times`);
});

Deno.test("privacy: an update within the bound is kept as it is", () => {
  const values = Float64Array.from([0.5, -0.25, 0.125]);
  const { update, norm } = clipUpdate(new Map([["a", values]]), 1);
  assertEquals([...update.get("a")!], [0.5, -0.25, 0.125]);
  assertEquals(norm, Math.sqrt(0.25 + 0.0625 + 0.015625));
  assertThrows(() => clipUpdate(new Map([["a", Float64Array.of(NaN)]]), 1), RangeError, "NaN");
});

function tensors(rng: Rng, sizes: Record<string, number>, scale: number): Map<string, NamedTensor> {
  return new Map(
    Object.entries(sizes).map((
      [name, n],
    ) => [name, { shape: [n], data: Float32Array.from(rng.normal(n, scale)) }]),
  );
}

Deno.test("privacy: central DP-FedAvg equals its float64 reference with the same noise", () => {
  const rng = new Rng(3);
  const sizes = { "h.0.attn.c_attn.lora_A": 37, "h.0.mlp.experts.0.c_fc.lora_B": 5 };
  const global = tensors(rng, sizes, 0.1);
  // Three clients: one far outside C (clipped), one inside, one at 1e3·C.
  const clients = [0.05, 0.001, 50].map((step) => {
    const move = tensors(rng, sizes, step);
    return new Map([...global].map(([name, t]) => [name, {
      shape: t.shape,
      data: t.data.map((x, i) => x + move.get(name)!.data[i]),
    }]));
  });
  const settings = { clip: 0.2, noise: 1.3 };
  const noise = GaussianNoise.fromKey(seedKey(9));
  const { tensors: out, norms } = centralDpAggregate(global, clients, settings, 4, noise);
  assertEquals(noise.state().drawn, 42);
  // Reference: the same normals, drawn in the global's order; clipping by min(1, C/‖Δ‖).
  const replay = GaussianNoise.fromKey(seedKey(9));
  const deltas = clients.map((c) =>
    new Map(
      [...global].map(([name, t]) => [name, [...t.data].map((x, i) => c.get(name)!.data[i] - x)]),
    )
  );
  const refNorms = deltas.map((d) =>
    Math.sqrt([...d.values()].flat().reduce((s, x) => s + x * x, 0))
  );
  norms.forEach((n, c) => assert(Math.abs(n - refNorms[c]) <= 1e-15 * refNorms[c]));
  assert(norms[0] > 0.2 && norms[1] < 0.2 && norms[2] > 100);
  for (const [name, t] of global) {
    t.data.forEach((x, i) => {
      let sum = 0;
      deltas.forEach((d, c) => sum += d.get(name)![i] * Math.min(1, settings.clip / refNorms[c]));
      const expected = x + (sum + settings.noise * settings.clip * replay.next()) / 4;
      // Clipped values are rounded to float32 (toward zero) before the sum: each is off by at
      // most 2⁻²³ of itself, so the average by at most 3·2⁻²³·C/4; plus the output's rounding.
      const got = out.get(name)!.data[i];
      assert(
        Math.abs(got - expected) <=
          3 * 2 ** -23 * settings.clip / 4 + 2 ** -24 * Math.abs(expected),
        `${name}[${i}]: ${got} vs ${expected}`,
      );
    });
  }
});

Deno.test("privacy: central noise has standard deviation z·C/K, drawn even with no update", () => {
  const n = 200_000;
  const global = new Map([["a", { shape: [n], data: new Float32Array(n) }]]);
  const settings = { clip: 0.3, noise: 1.5 };
  const K = 4;
  const out = centralDpAggregate(global, [], settings, K, GaussianNoise.fromKey(seedKey(1)))
    .tensors.get("a")!.data;
  let squares = 0;
  for (const x of out) squares += x * x;
  const std = Math.sqrt(squares / n);
  const expected = (settings.noise * settings.clip) / K;
  // The sample standard deviation's SE is σ/√(2n) = 1.6e-3·σ; 5 SE.
  assert(Math.abs(std / expected - 1) < 5 / Math.sqrt(2 * n), `std ${std} vs ${expected}`);
  assertThrows(() =>
    centralDpAggregate(global, [], settings, 0, GaussianNoise.fromKey(seedKey(1)))
  );
});

Deno.test("privacy: local DP sends global + clip(Δ) + N(0, (zC)²), and validation lets it in", () => {
  const rng = new Rng(8);
  const sizes = { "h.0.attn.c_attn.lora_A": 40000, "h.0.attn.c_attn.lora_B": 25536 };
  const global = tensors(rng, sizes, 0.05);
  const local = new Map([...global].map(([name, t]) => [name, {
    shape: t.shape,
    data: t.data.map((x) => x + 0.01 * (rng.next() - 0.5)),
  }]));
  const settings = { clip: 0.5, noise: 1.1 };
  const { tensors: sent, norm } = localDpTensors(
    global,
    local,
    settings,
    GaussianNoise.fromKey(seedKey(4)),
  );
  const replay = GaussianNoise.fromKey(seedKey(4));
  const scale = Math.min(1, settings.clip / norm);
  assert(scale < 1);
  for (const [name, t] of global) {
    t.data.forEach((x, i) => {
      const expected = x + (local.get(name)!.data[i] - x) * scale +
        settings.noise * settings.clip * replay.next();
      const got = sent.get(name)!.data[i];
      assert(Math.abs(got - expected) <= 2 ** -23 * (Math.abs(expected) + settings.clip), name);
    });
  }
  // The server's check with the local-DP bound accepts it; the default-sized bound would not.
  const expect = {
    round: 1,
    client: 0,
    shapes: shapesOf(global),
    global,
    maxUpdateNorm: localDpNormBound(settings, 65536),
  };
  const message = { round: 1, sender: 0, trainTokens: 1, tensors: sent };
  assert(validateMessage(message, expect).accepted);
  assert(!validateMessage(message, { ...expect, maxUpdateNorm: 10 }).accepted);
});

Deno.test("privacy: each mode's accountant, and settings without a guarantee refused", () => {
  const settings: DpSettings = { mode: "central", clip: 1, noise: 1.2, delta: 1e-5 };
  assertEquals([...dpAccountant(settings, 0.1).perRound], [
    ...new RdpAccountant(0.1, 1.2, 1e-5).perRound,
  ]);
  assertEquals(
    [...dpAccountant({ ...settings, mode: "local" }, 0.1).perRound],
    [...new RdpAccountant(1, 0.6, 1e-5).perRound],
  );
  checkDpSettings(settings);
  for (
    const [bad, flag] of [
      [{ clip: 0 }, "--dp-clip"],
      [{ clip: Infinity }, "--dp-clip"],
      [{ noise: 0 }, "--dp-noise"],
      [{ delta: 1 }, "--dp-delta"],
      [{ delta: 0 }, "--dp-delta"],
      [{ mode: "global" }, "--dp global"],
    ] as const
  ) {
    assertThrows(() => checkDpSettings({ ...settings, ...bad } as DpSettings), RangeError, flag);
  }
});
