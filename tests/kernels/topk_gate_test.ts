import { throws } from "node:assert/strict";
import { topkGate } from "../../kernels/topk_gate.ts";
import type { Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import { topkGateBackwardRef, topkGateRef } from "../ref/topk_gate.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, probe, Rng } from "../util.ts";

// Gates and their gradients are O(1); f32 exp of logit gaps up to ~15 has relative error
// ~15·2⁻²⁴ ≈ 1e-6, plus a few roundings in the sum over ≤ 16 experts and the division.
const TOL = { atol: 1e-6, rtol: 1e-5 };

for (const [experts, k] of [[4, 1], [4, 2], [5, 3], [5, 5], [3, 7], [1, 1]]) {
  Deno.test(`top-k gate reference gradient matches finite differences (E=${experts}, k=${k})`, () => {
    const rng = new Rng(experts * 10 + k);
    const rows = 3;
    const logits = rng.normal(rows * experts, 2);
    const dgates = rng.uniform(rows * experts);
    // Random logits are distinct, so ±h never changes the selection.
    assertGradMatchesFD(
      (x) => dot(topkGateRef(x, experts, k), dgates),
      logits,
      topkGateBackwardRef(logits, dgates, experts, k),
      `top-k gate E=${experts} k=${k}`,
    );
  });
}

Deno.test("top-k gate reference breaks ties to the lowest expert index", () => {
  const gates = topkGateRef([1, 2, 2, 2], 4, 2);
  assertClose(gates, [0, 0.5, 0.5, 0], TOL, "k=2 ties");
  const top1 = topkGateRef([3, 3, 0], 3, 1);
  const p = Math.exp(3) / (2 * Math.exp(3) + 1);
  assertClose(top1, [p, 0, 0], TOL, "k=1 ties");
});

/** Forward, overwrite backward (intermediate input) and accumulate backward (leaf input). */
async function checkGate(
  engine: Engine,
  rows: number,
  experts: number,
  k: number,
  logits: Float64Array,
): Promise<void> {
  const what = `top-k gate N=${rows} E=${experts} k=${k}`;
  const dgates = f32(new Rng(rows + experts).uniform(rows * experts));
  const dlogitsRef = topkGateBackwardRef(logits, dgates, experts, k);
  const x = engine.tensor([rows, experts], { data: logits, label: "router logits" });
  const dy = engine.tensor([rows, experts], { data: dgates, label: "dgates" });

  const tape = new Tape(engine);
  const probed = probe(tape, x);
  const gates = topkGate(tape, probed.y, k);
  await engine.run(tape.forward());
  assertClose(await engine.readF32(gates), topkGateRef(logits, experts, k), TOL, `${what} gates`);
  await engine.run(tape.backward(gates, dy));
  assertClose(await engine.readF32(probed.grad()), dlogitsRef, TOL, `${what} dlogits (overwrite)`);

  const leafTape = new Tape(engine);
  const previous = f32(new Rng(5).uniform(rows * experts));
  x.requiresGrad = true;
  x.grad = engine.tensor([rows, experts], { data: previous, label: "grad router logits" });
  const leafGates = topkGate(leafTape, x, k);
  await engine.run([...leafTape.forward(), ...leafTape.backward(leafGates, dy)]);
  const expected = previous.map((p, i) => p + dlogitsRef[i]);
  assertClose(await engine.readF32(x.grad), expected, TOL, `${what} dlogits (accumulate)`);

  tape.dispose();
  leafTape.dispose();
  x.dispose();
  dy.dispose();
}

// Awkward row counts, E from 1 to 16, k = 1, 2, 3, E, and k > E (clipped to E); N = 8192 is
// the paper's batch of 64 × 128 tokens.
const cases: [number, number, number][] = [
  [1, 1, 1],
  [3, 1, 2],
  [65, 2, 1],
  [65, 2, 2],
  [127, 3, 2],
  [17, 4, 1],
  [1027, 4, 2],
  [1027, 4, 4],
  [65, 5, 9],
  [65, 7, 3],
  [65, 16, 1],
  [300, 16, 2],
  [8192, 16, 4],
  [8192, 2, 2],
];
for (const [rows, experts, k] of cases) {
  gpuTest(
    `top-k gate matches the reference (N=${rows}, E=${experts}, k=${k})`,
    (engine) =>
      checkGate(
        engine,
        rows,
        experts,
        k,
        f32(new Rng(rows * 100 + experts).normal(rows * experts, 2)),
      ),
  );
}

// Logits drawn from {0, 1, 2}: most rows hold ties, which must go to the lowest index.
for (const k of [1, 2, 3]) {
  gpuTest(
    `top-k gate breaks ties to the lowest expert index (E=4, k=${k})`,
    (engine) => checkGate(engine, 200, 4, k, Float64Array.from(new Rng(k).int(800, 3))),
  );
}

gpuTest("top-k gate gives the same bits on two runs", async (engine) => {
  const [rows, experts] = [1027, 7];
  const x = engine.tensor([rows, experts], {
    data: new Rng(4).normal(rows * experts, 2),
    label: "router logits",
  });
  const tape = new Tape(engine);
  const gates = topkGate(tape, x, 3);
  const runs: Float32Array[] = [];
  for (let run = 0; run < 2; run++) {
    await engine.run(tape.forward());
    runs.push(await engine.readF32(gates));
  }
  const [a, b] = runs.map((r) => new Uint32Array(r.buffer));
  if (a.some((bits, i) => bits !== b[i])) throw new Error("top-k gate differs between runs");
  tape.dispose();
  x.dispose();
});

gpuTest("top-k gate rejects k < 1 and more than 16 experts", async (engine) => {
  await Promise.resolve();
  const tape = new Tape(engine);
  const x = engine.tensor([4, 17], { label: "router logits" });
  const y = engine.tensor([4, 4], { label: "router logits" });
  throws(() => topkGate(tape, x, 2), ShapeError);
  throws(() => topkGate(tape, y, 0), ShapeError);
  tape.dispose();
  x.dispose();
  y.dispose();
});
