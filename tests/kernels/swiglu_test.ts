import { add } from "../../kernels/add.ts";
import { swiglu } from "../../kernels/swiglu.ts";
import type { Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import { swigluBackwardRef, swigluRef } from "../ref/swiglu.ts";
import { addRef } from "../ref/add.ts";
import { assertEquals, assertThrows } from "../assert.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, leaf, Rng } from "../util.ts";

// f32 exp and one division give σ to a few ulps, then two or three products: measured ≤ 7.5e-7
// relative on y and dup (|g| ≤ 12, |u| ≤ 2, 1.5M values). dgate's error is absolute (≤ 4e-7)
// near silu's minimum (g ≈ −1.28), where 1 + g·σ(−g) cancels: atol covers it with 2× headroom
// (beyond 2e-6 relative it needed 4e-8).
const TOL = { atol: 1e-6, rtol: 2e-6 };

Deno.test("swiglu reference gradients match finite differences", () => {
  const rng = new Rng(1);
  const gate = rng.uniform(17, -8, 8);
  const up = rng.uniform(17, -2, 2);
  const dy = rng.uniform(17);
  const grads = swigluBackwardRef(gate, up, dy);
  assertGradMatchesFD((v) => dot(swigluRef(v, up), dy), gate, grads.dgate, "swiglu dgate", {
    count: 17,
  });
  assertGradMatchesFD((v) => dot(swigluRef(gate, v), dy), up, grads.dup, "swiglu dup", {
    count: 17,
  });
});

/** Forward and accumulated gradients on `gate` values against the float64 reference. */
async function check(
  engine: Engine,
  gates: Float64Array,
  opts: { maxBindingBytes?: number } = {},
) {
  const n = gates.length;
  const rng = new Rng(n + 1);
  const ups = f32(rng.uniform(n, -2, 2));
  const dys = f32(rng.uniform(n));
  const before = { gate: f32(rng.uniform(n)), up: f32(rng.uniform(n)) };
  const gate = leaf(engine, [n], gates, "gate");
  const up = leaf(engine, [n], ups, "up");
  gate.grad = engine.tensor([n], { data: before.gate });
  up.grad = engine.tensor([n], { data: before.up });
  const dy = engine.tensor([n], { data: dys, label: "dy" });
  const tape = new Tape(engine);
  const y = swiglu(tape, gate, up, opts);
  await engine.run([...tape.forward(), ...tape.backward(y, dy)]);
  assertClose(await engine.readF32(y), swigluRef(gates, ups), TOL, "swiglu y");
  const grads = swigluBackwardRef(gates, ups, dys);
  assertClose(await engine.readF32(gate.grad), addRef(before.gate, grads.dgate), TOL, "dgate");
  assertClose(await engine.readF32(up.grad), addRef(before.up, grads.dup), TOL, "dup");
  tape.dispose();
  for (const t of [gate, up, dy]) t.dispose();
}

// Odd lengths run the scalar kernel, multiples of 4 the vec4 one; 1024·1536 is SmolLM2-135M's
// MLP width at batch 8, sequence 128.
for (const n of [1, 3, 17, 64, 127, 1024 * 1536]) {
  gpuTest(`swiglu forward and accumulated gradients match float64 (n=${n})`, (engine) => {
    return check(engine, f32(new Rng(n).uniform(n, -12, 12)));
  });
}

// Where exp(−g) overflows f32 (g < −88.7) or rounds σ(g) to 1 (g > 17): the gradient must stay
// finite and exact (σ(−g) from 1 − σ(g) would be inf/inf = NaN or 0 there).
gpuTest("swiglu is exact and finite at extreme gate values", (engine) => {
  const extremes = [
    -1e4,
    -1000,
    -100,
    -89,
    -88,
    -87,
    -30,
    -17,
    -1.2784645,
    -1e-30,
    0,
    1e-30,
    1,
    10,
    17,
    30,
    87,
    88,
    89,
    100,
    1000,
    1e4,
  ];
  const gates = f32([...extremes, ...extremes.map((g) => g / 3)]);
  return check(engine, gates);
});

// Chunks of 64 elements (16 vec4s), the last one partial.
gpuTest("swiglu split into binding chunks matches float64", (engine) => {
  return check(engine, f32(new Rng(5).uniform(1000, -12, 12)), { maxBindingBytes: 256 });
});

gpuTest("swiglu computes only the gradient asked for; overwrites intermediates", async (engine) => {
  // up is a frozen input; gate is an add's output consumed only here, so the tape asks for an
  // overwrite: two backward runs must give the leaf behind the add exactly twice the gradient.
  const n = 4096;
  const rng = new Rng(9);
  const gates = f32(rng.uniform(n, -12, 12)), ups = f32(rng.uniform(n, -2, 2));
  const dys = f32(rng.uniform(n));
  const gate0 = leaf(engine, [n], gates, "gate0");
  const zeros = engine.tensor([n]);
  const up = engine.tensor([n], { data: ups, label: "up" });
  const dy = engine.tensor([n], { data: dys, label: "dy" });
  const tape = new Tape(engine);
  const y = swiglu(tape, add(tape, gate0, zeros), up);
  await engine.run(tape.forward());
  const backward = tape.backward(y, dy);
  await engine.run(backward);
  await engine.run(backward);
  const twice = swigluBackwardRef(gates, ups, dys).dgate.map((g) => 2 * g);
  assertClose(await engine.readF32(gate0.grad!), twice, TOL, "dgate (overwritten twice)");
  assertEquals(up.grad, undefined, "up.grad");
  tape.dispose();
  for (const t of [gate0, zeros, up, dy]) t.dispose();
});

gpuTest("swiglu with a frozen gate computes du alone", async (engine) => {
  const n = 1001;
  const rng = new Rng(10);
  const gates = f32(rng.uniform(n, -12, 12)), ups = f32(rng.uniform(n, -2, 2));
  const dys = f32(rng.uniform(n));
  const gate = engine.tensor([n], { data: gates, label: "gate" });
  const up = leaf(engine, [n], ups, "up");
  const dy = engine.tensor([n], { data: dys, label: "dy" });
  const tape = new Tape(engine);
  const y = swiglu(tape, gate, up);
  await engine.run([...tape.forward(), ...tape.backward(y, dy)]);
  assertClose(await engine.readF32(up.grad!), swigluBackwardRef(gates, ups, dys).dup, TOL, "dup");
  assertEquals(gate.grad, undefined, "gate.grad");
  tape.dispose();
  for (const t of [gate, up, dy]) t.dispose();
});

gpuTest("swiglu rejects mismatched or shared inputs", (engine) => {
  const tape = new Tape(engine);
  const a = engine.tensor([4, 8]), b = engine.tensor([8, 4]);
  assertThrows(() => swiglu(tape, a, b), ShapeError, "same shape");
  assertThrows(() => swiglu(tape, a, a), ShapeError, "share memory");
  // A reshaped view of a is another tensor on a's memory.
  assertThrows(() => swiglu(tape, a, tape.reshape(a, [4, 8])), ShapeError, "share memory");
  tape.dispose();
  a.dispose();
  b.dispose();
  return Promise.resolve();
});
