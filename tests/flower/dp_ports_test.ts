// The ServerApp's DP against the TypeScript it ports, on fixed inputs, through the pinned Python
// in flower/.venv (tests/flower/flower_dp.py): fed/noise.ts's Gaussian stream (bit for bit, from
// the start, mid-block, past 2³² blocks, under a key of all-ones bytes), fed/accountant.ts's ε
// for central and local DP (to 1e-12 relative), and fed/privacy.ts's central DP-FedAvg round
// (bit for bit, with updates under and over the clipping norm, and with no update at all); and
// that a run without a seed keys its noise with secrets.token_bytes (the OS's cryptographic
// randomness), fresh each time.
import { dpAccountant } from "../../fed/privacy.ts";
import { centralDpAggregate } from "../../fed/privacy.ts";
import { GaussianNoise, seedKey } from "../../fed/noise.ts";
import type { NamedTensor } from "../../model/safetensors.ts";
import { assert, assertEquals } from "../assert.ts";
import { Rng } from "../util.ts";
import { flowerPython, flowerTest } from "./harness.ts";

const hexOf = (data: Float32Array | Float64Array) =>
  Array.from(
    new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    (x) => x.toString(16).padStart(2, "0"),
  ).join("");

const record = (tensors: Map<string, NamedTensor>) =>
  Object.fromEntries(
    [...tensors].map(([name, t]) => [name, { shape: t.shape, f32: hexOf(t.data as Float32Array) }]),
  );

interface Results {
  noise: string[];
  epsilon: number[];
  central: Record<string, string>[];
  secure: { keys: string[]; calls: { n: number; hex: string }[] };
}

async function python(cases: unknown): Promise<Results> {
  return await flowerPython("flower_dp.py", cases);
}

/** Global tensors a [3, 4] and b [5], and clients moved from them by updates of norm `norms`. */
function round(norms: number[], seed: number) {
  const rng = new Rng(seed);
  const global = new Map<string, NamedTensor>([
    ["a", { shape: [3, 4], data: Float32Array.from(rng.normal(12, 0.1)) }],
    ["b", { shape: [5], data: Float32Array.from(rng.uniform(5, -0.3, 0.3)) }],
  ]);
  const clients = norms.map((norm) => {
    const steps = [...global].map(([name, t]) => [name, rng.normal(t.data.length)] as const);
    const length = Math.sqrt(steps.reduce((s, [, v]) => s + v.reduce((a, x) => a + x * x, 0), 0));
    return new Map(
      steps.map(([name, v]) => {
        const start = global.get(name)!;
        const data = Float32Array.from(start.data, (x, i) => x + (v[i] * norm) / length);
        return [name, { shape: start.shape, data }];
      }),
    );
  });
  return { global, clients };
}

flowerTest(
  "flower DP: the ServerApp's noise, ε and central round equal the TypeScript's",
  async () => {
    const noise = [
      { key: seedKey(3), drawn: 0, count: 20000 },
      { key: seedKey(3), drawn: 5, count: 21 },
      { key: seedKey(4294967295), drawn: 8 * (2 ** 32 + 5) - 3, count: 19 },
      { key: "ff".repeat(32), drawn: 0, count: 64 },
    ];
    const epsilon = [];
    for (const mode of ["central", "local"] as const) {
      for (const z of [0.5, 1.1, 4]) {
        for (const [delta, rounds] of [[1e-5, 0], [1e-5, 1], [1e-6, 2], [1e-5, 10], [1e-5, 1000]]) {
          epsilon.push({ mode, noise: z, delta, rounds });
        }
      }
    }
    const central = [
      // Under the norm, over it (clipped, toward zero), far over it; K above the arrivals.
      { norms: [0.3, 2.5, 1e6], clip: 1, noise: 1.1, expected: 4, seed: 7 },
      { norms: [0.01, 0.02], clip: 0.05, noise: 0.5, expected: 2, seed: 8 },
      // No update arrived: the noise alone moves the global.
      { norms: [], clip: 1, noise: 1, expected: 3, seed: 9 },
    ].map((c, i) => ({ ...c, ...round(c.norms, 300 + i) }));

    const py = await python({
      noise,
      epsilon,
      central: central.map((c) => ({
        ...c,
        global: record(c.global),
        clients: c.clients.map(record),
      })),
    });

    for (const [i, { key, drawn, count }] of noise.entries()) {
      const stream = GaussianNoise.restore({ key, drawn });
      const ours = Float64Array.from({ length: count }, () => stream.next());
      assertEquals(py.noise[i], hexOf(ours), `${count} normals from ${drawn} under ${key}`);
    }
    for (const [i, { mode, noise: z, delta, rounds }] of epsilon.entries()) {
      const ours = dpAccountant({ mode, clip: 1, noise: z, delta }, 1).epsilon(rounds).epsilon;
      // Measured: equal to the last bit or two (log1p, expm1 and log of two libms).
      assert(
        Math.abs(py.epsilon[i] - ours) <= 1e-12 * ours,
        `${mode} z=${z} δ=${delta} ${rounds} rounds: ε ${py.epsilon[i]}, TypeScript ${ours}`,
      );
    }
    for (const [i, c] of central.entries()) {
      const ours = centralDpAggregate(
        c.global,
        c.clients,
        { clip: c.clip, noise: c.noise },
        c.expected,
        GaussianNoise.fromKey(seedKey(c.seed)),
      ).tensors;
      for (const [name, t] of ours) {
        assertEquals(py.central[i][name], hexOf(t.data as Float32Array), `case ${i}, ${name}`);
      }
    }

    // No seed: two fresh keys, each the hex of 32 bytes secrets.token_bytes returned.
    const { keys, calls } = py.secure;
    assertEquals(calls.map((c) => c.n), [32, 32]);
    assertEquals(keys, calls.map((c) => c.hex));
    assert(keys[0] !== keys[1] && keys.every((k) => /^[0-9a-f]{64}$/.test(k)), keys.join());
  },
);
