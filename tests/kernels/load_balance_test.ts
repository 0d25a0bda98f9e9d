import { throws } from "node:assert/strict";
import { loadBalance } from "../../kernels/load_balance.ts";
import type { Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import {
  densityRef,
  expertFactorsRef,
  loadBalanceBackwardRef,
  loadBalanceRef,
  meanProbRef,
} from "../ref/load_balance.ts";
import { assertClose, assertGradMatchesFD, f32, gpuTest, probe, Rng } from "../util.ts";

// Tolerances. Routing compares raw logits, so the GPU's counts (u32) equal the reference's
// exactly; the error is in the probabilities. Each p carries a few ulps (~3e-7 relative) from
// exp and the division, and prob_e adds N of them: 64 in order per first-pass invocation, then
// up to 256 partials in order per later pass, rounding errors growing like u·√terms:
// u·(√64 + √313) ≈ 1.5e-6 at N = 20000, the largest case. LB = Σ prob_e·C_e has C_e ≥ 0, so
// its relative error stays below that; 4e-6 leaves margin (measured: ≤ 1.4e-7). Misrouting one
// token of N = 1000 moves LB by ~1e-3, far outside.
const LB_RTOL = 4e-6;
// Gradient: g·p_j·(w_j − Σ_e w_e·p_e) with w_e = (C_e − C_0)/N. The C_e are rounded at the scale
// of max C (an ulp each) and p carries ~3e-7 relative error, against |w| ≤ max C/N, so the
// absolute error is a few 1e-7 of |g|·max C/N, plus a few ulps relative (and the accumulate
// path's addition to O(1) values, one ulp of those). 4e-6 of each leaves margin
// (measured: ≤ 3.5e-7 of |g|·max C/N + |ref|).
const GRAD_RTOL = 4e-6;
const GRAD_ATOL_PER_SCALE = 4e-6;

function gradTolerance(logits: Float64Array, experts: number, k: number, rho: number, g: number) {
  const rows = logits.length / experts;
  const density = densityRef(logits, experts, k);
  const factors = expertFactorsRef(experts, rho);
  const maxC = Math.max(...density.map((d, e) => d * factors[e]));
  return { atol: GRAD_ATOL_PER_SCALE * Math.abs(g) * maxC / rows, rtol: GRAD_RTOL };
}

for (
  const [experts, k, rho] of [[2, 1, 0.5], [3, 2, 0.3], [5, 3, 0.7], [4, 4, 0.3], [16, 2, 0.5]]
) {
  const name = `E=${experts}, k=${k}, ρ=${rho}`;
  Deno.test(`load-balance reference gradient matches finite differences (${name})`, () => {
    const rows = 7;
    const logits = new Rng(experts * 10 + k).normal(rows * experts, 2);
    // Random logits are distinct, so ±h never changes the routing (density is constant).
    // The FD of a scaled LB checks the upstream factor too.
    const dlb = 0.7;
    assertGradMatchesFD(
      (x) => dlb * loadBalanceRef(x, experts, k, rho),
      logits,
      loadBalanceBackwardRef(logits, experts, k, rho, dlb),
      `load balance E=${experts} k=${k} ρ=${rho}`,
      { count: rows * experts },
    );
  });
}

Deno.test("load-balance reference: E=2, k=2, ρ=½ is 1 with zero gradient", () => {
  const logits = new Rng(2).normal(2 * 9, 3);
  assertClose([loadBalanceRef(logits, 2, 2, 0.5)], [1], { atol: 1e-15, rtol: 0 }, "LB");
  const grad = loadBalanceBackwardRef(logits, 2, 2, 0.5, 1);
  assertClose(grad, new Float64Array(grad.length), { atol: 1e-17, rtol: 0 }, "dlogits");
});

Deno.test("load-balance reference routes ties to the lowest expert index", () => {
  // Rows: all equal (k=2 → experts 0, 1); [1, 2, 2] (k=1 → expert 1; k=2 → 1, 2).
  assertClose(densityRef([5, 5, 5, 5], 4, 2), [0.5, 0.5, 0, 0], { atol: 0, rtol: 0 }, "k=2");
  assertClose(densityRef([1, 2, 2], 3, 1), [0, 1, 0], { atol: 0, rtol: 0 }, "k=1");
  assertClose(densityRef([1, 2, 2], 3, 2), [0, 0.5, 0.5], { atol: 0, rtol: 0 }, "k=2");
  assertClose(meanProbRef([0, 0], 2), [0.5, 0.5], { atol: 0, rtol: 0 }, "prob");
});

interface Case {
  shape: number[];
  k: number;
  rho: number;
  logits: Float64Array;
  /** Which gradient path gets the constant-1 upstream (the other gets `upstream`). */
  unitPath: "overwrite" | "accumulate";
}

/**
 * Forward against the reference, then backward into an intermediate (overwrite: the gradient
 * the tape assigns to a probe's output) and into a leaf's prefilled .grad (accumulate), one with
 * the unit upstream of `tape.backward(lb)` and the other with an upstream tensor.
 */
async function checkCase(engine: Engine, c: Case): Promise<void> {
  const experts = c.shape[c.shape.length - 1];
  const rows = c.logits.length / experts;
  const what = `load balance N=${rows} E=${experts} k=${c.k} ρ=${c.rho}`;
  const upstream = -1.75;
  const x = engine.tensor(c.shape, { data: c.logits, label: "router logits" });
  const dlb = engine.tensor([1], { data: [upstream], label: "dlb" });
  const g = (unit: boolean) => unit ? 1 : upstream;
  const tapes: Tape[] = [];
  try {
    const lbRef = loadBalanceRef(c.logits, experts, c.k, c.rho);
    const tape = new Tape(engine);
    tapes.push(tape);
    const probed = probe(tape, x);
    const lb = loadBalance(tape, probed.y, c.k, c.rho);
    await engine.run(tape.forward());
    assertClose(await engine.readF32(lb), [lbRef], { atol: 0, rtol: LB_RTOL }, `${what} LB`);
    const overwriteUnit = c.unitPath === "overwrite";
    await engine.run(overwriteUnit ? tape.backward(lb) : tape.backward(lb, dlb));
    const gOverwrite = g(overwriteUnit);
    assertClose(
      await engine.readF32(probed.grad()),
      loadBalanceBackwardRef(c.logits, experts, c.k, c.rho, gOverwrite),
      gradTolerance(c.logits, experts, c.k, c.rho, gOverwrite),
      `${what} dlogits (overwrite, upstream ${gOverwrite})`,
    );

    const leafTape = new Tape(engine);
    tapes.push(leafTape);
    const previous = f32(new Rng(rows + experts).uniform(c.logits.length));
    x.requiresGrad = true;
    x.grad = engine.tensor(c.shape, { data: previous, label: "grad router logits" });
    const leafLb = loadBalance(leafTape, x, c.k, c.rho);
    const backward = overwriteUnit ? leafTape.backward(leafLb, dlb) : leafTape.backward(leafLb);
    await engine.run([...leafTape.forward(), ...backward]);
    const gAccumulate = g(!overwriteUnit);
    const grad = loadBalanceBackwardRef(c.logits, experts, c.k, c.rho, gAccumulate);
    assertClose(
      await engine.readF32(x.grad),
      previous.map((p, i) => p + grad[i]),
      gradTolerance(c.logits, experts, c.k, c.rho, gAccumulate),
      `${what} dlogits (accumulate, upstream ${gAccumulate})`,
    );
  } finally {
    for (const tape of tapes) tape.dispose();
    x.dispose();
    dlb.dispose();
  }
}

function randomLogits(rows: number, experts: number, seed: number): Float64Array {
  return f32(new Rng(seed).normal(rows * experts, 2));
}

// Awkward shapes: every E with every k (k = 3 > E = 2 is clipped), each at all four N, ρ
// alternating so every (E, k) sees both; which path gets the unit upstream alternates too.
const cases: (Case & { name: string })[] = [];
for (const experts of [2, 3, 5, 16]) {
  for (const k of [1, 2, 3]) {
    [1, 3, 65, 1000].forEach((rows, i) => {
      cases.push({
        name: `N=${rows}, E=${experts}, k=${k}`,
        shape: [rows, experts],
        k,
        rho: i % 2 ? 0.3 : 0.5,
        logits: randomLogits(rows, experts, rows * 100 + experts * 10 + k),
        unitPath: (i + k) % 2 ? "overwrite" : "accumulate",
      });
    });
  }
}
// Leading dimensions fold into N; the paper's batch (64 × 128 tokens) with E = 4; N over
// 64·256 rows so the partials take a shrinking pass before the final one.
cases.push({
  name: "[2, 65, 4], k=2",
  shape: [2, 65, 4],
  k: 2,
  rho: 0.3,
  logits: randomLogits(130, 4, 9),
  unitPath: "overwrite",
});
for (const [k, rho] of [[2, 0.5], [1, 0.3]] as const) {
  cases.push({
    name: `N=8192, E=4, k=${k}`,
    shape: [8192, 4],
    k,
    rho,
    logits: randomLogits(8192, 4, 8192 + k),
    unitPath: k === 2 ? "accumulate" : "overwrite",
  });
}
cases.push({
  name: "N=20000, E=5, k=2 (shrinking pass)",
  shape: [20000, 5],
  k: 2,
  rho: 0.3,
  logits: randomLogits(20000, 5, 20000),
  unitPath: "accumulate",
});
// Logits drawn from {0, 1, 2}: most rows hold ties, which must go to the lowest expert index.
for (const [experts, k] of [[4, 1], [4, 2], [5, 3]]) {
  cases.push({
    name: `ties, N=300, E=${experts}, k=${k}`,
    shape: [300, experts],
    k,
    rho: 0.3,
    logits: Float64Array.from(new Rng(k).int(300 * experts, 3)),
    unitPath: k % 2 ? "overwrite" : "accumulate",
  });
}
for (const c of cases) {
  gpuTest(
    `load balance matches the float64 reference (${c.name}, ρ=${c.rho})`,
    (engine) => checkCase(engine, c),
  );
}

gpuTest(
  "load balance with E=2, k=2, ρ=½ is exactly 1 with an exactly zero gradient",
  async (engine) => {
    const rows = 1000;
    const x = engine.tensor([rows, 2], { data: randomLogits(rows, 2, 3), label: "router logits" });
    const previous = f32(new Rng(4).uniform(rows * 2));
    x.requiresGrad = true;
    x.grad = engine.tensor([rows, 2], { data: previous, label: "grad router logits" });
    const tape = new Tape(engine);
    const lb = loadBalance(tape, x, 2, 0.5);
    await engine.run([...tape.forward(), ...tape.backward(lb)]);
    const [value] = await engine.readF32(lb);
    if (value !== 1) throw new Error(`LB is ${value}, not exactly 1`);
    // Adding an exact 0 leaves every previous value bit for bit.
    assertClose(await engine.readF32(x.grad), previous, { atol: 0, rtol: 0 }, "dlogits");
    tape.dispose();
    x.dispose();
  },
);

gpuTest("load balance gives the same bits on two runs", async (engine) => {
  const [rows, experts] = [20000, 7];
  const x = engine.tensor([rows, experts], {
    data: randomLogits(rows, experts, 5),
    label: "router logits",
  });
  x.requiresGrad = true;
  const tape = new Tape(engine);
  const lb = loadBalance(tape, x, 2, 0.3);
  const commands = [...tape.forward(), ...tape.backward(lb)];
  const runs: Uint32Array[] = [];
  for (let run = 0; run < 2; run++) {
    await engine.run([{ kind: "clear", label: "zero grad", tensor: x.grad! }, ...commands]);
    const value = await engine.readF32(lb);
    const grad = await engine.readF32(x.grad!);
    runs.push(new Uint32Array([...new Uint32Array(value.buffer), ...new Uint32Array(grad.buffer)]));
  }
  if (runs[0].some((bits, i) => bits !== runs[1][i])) {
    throw new Error("load balance differs between runs");
  }
  tape.dispose();
  x.dispose();
});

gpuTest(
  "load balance rejects E < 2, E > 16, 1-D logits, k < 1 and ρ outside (0, 1)",
  async (engine) => {
    await Promise.resolve();
    const tape = new Tape(engine);
    const single = engine.tensor([4, 1], { label: "router logits" });
    const wide = engine.tensor([4, 17], { label: "router logits" });
    const flat = engine.tensor([8], { label: "router logits" });
    const x = engine.tensor([4, 4], { label: "router logits" });
    try {
      throws(() => loadBalance(tape, single, 1, 0.5), /E = 1/);
      throws(() => loadBalance(tape, wide, 2, 0.5), ShapeError);
      throws(() => loadBalance(tape, flat, 2, 0.5), ShapeError);
      throws(() => loadBalance(tape, x, 0, 0.5), ShapeError);
      throws(() => loadBalance(tape, x, 1.5, 0.5), ShapeError);
      for (const rho of [0, 1, -0.5, 2, NaN, 1e-300]) {
        throws(() => loadBalance(tape, x, 2, rho), RangeError);
      }
    } finally {
      tape.dispose();
      for (const t of [single, wide, flat, x]) t.dispose();
    }
  },
);
