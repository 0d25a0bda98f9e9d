import assert from "node:assert/strict";
import { add } from "../../kernels/add.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import { addBackwardRef, addRef } from "../ref/add.ts";
import { assertThrows } from "../assert.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, leaf, Rng } from "../util.ts";

// One f32 addition: the result is the float64 sum of the f32 inputs correctly rounded, so it
// equals f32(reference) exactly; the gradients are copies or single additions likewise.
const EXACT = { atol: 0, rtol: 0 };

Deno.test("add reference gradients match finite differences", () => {
  const rng = new Rng(1);
  const a = rng.uniform(7), b = rng.uniform(7), dout = rng.uniform(7);
  const { da, db } = addBackwardRef(dout);
  assertGradMatchesFD((v) => dot(addRef(v, b), dout), a, da, "add da");
  assertGradMatchesFD((v) => dot(addRef(a, v), dout), b, db, "add db");
});

// Scalar path for sizes that are not multiples of 4, vec4 otherwise; 1024×768 is GPT-2's
// residual stream at T = 1024, 1024×256 the reference config's (8×128 tokens).
for (const shape of [[1], [3], [17], [65, 3], [127], [4], [2, 2, 8], [1024, 256], [1024, 768]]) {
  gpuTest(`add forward and accumulated gradients are exact (${shape})`, async (engine) => {
    const size = shape.reduce((x, y) => x * y, 1);
    const rng = new Rng(size);
    const [as, bs, douts, beforeA, beforeB] = [0, 1, 2, 3, 4].map(() => f32(rng.uniform(size)));
    const a = leaf(engine, shape, as, "a");
    const b = leaf(engine, shape, bs, "b");
    // Leaf gradients accumulate: start them from non-zero values.
    a.grad = engine.tensor(shape, { data: beforeA });
    b.grad = engine.tensor(shape, { data: beforeB });
    const dout = engine.tensor(shape, { data: douts, label: "dout" });
    const tape = new Tape(engine);
    const out = add(tape, a, b);
    await engine.run(tape.forward());
    assertClose(await engine.readF32(out), f32(addRef(as, bs)), EXACT, "a + b");
    await engine.run(tape.backward(out, dout));
    const { da, db } = addBackwardRef(douts);
    assertClose(await engine.readF32(a.grad), f32(addRef(beforeA, da)), EXACT, "a.grad");
    assertClose(await engine.readF32(b.grad), f32(addRef(beforeB, db)), EXACT, "b.grad");
    tape.dispose();
    for (const t of [a, b, dout]) t.dispose();
  });
}

gpuTest("add splits tensors over the binding limit into aligned chunks", async (engine) => {
  // A 256-byte limit: 64-element chunks (vec4) and a ragged last one of 43 (scalar).
  const n = 1003, maxBindingBytes = 256;
  const rng = new Rng(n);
  const [as, bs, douts, before] = [0, 1, 2, 3].map(() => f32(rng.uniform(n)));
  const a = leaf(engine, [n], as, "a");
  const b = engine.tensor([n], { data: bs, label: "b" });
  a.grad = engine.tensor([n], { data: before });
  const dout = engine.tensor([n], { data: douts, label: "dout" });
  const tape = new Tape(engine);
  const out = add(tape, a, b, { maxBindingBytes });
  const backward = tape.backward(out, dout);
  assert.equal(tape.forward().length, 16, "forward: one dispatch per chunk");
  assert.equal(backward.length, 16, "accumulating backward: one dispatch per chunk");
  await engine.run([...tape.forward(), ...backward]);
  assertClose(await engine.readF32(out), f32(addRef(as, bs)), EXACT, "a + b");
  assertClose(await engine.readF32(a.grad), f32(addRef(before, douts)), EXACT, "a.grad");
  tape.dispose();
  for (const t of [a, b, dout]) t.dispose();
});

gpuTest("add of a tensor to itself accumulates its gradient twice", async (engine) => {
  const shape = [5, 7];
  const rng = new Rng(2);
  const [as, douts, before] = [0, 1, 2].map(() => f32(rng.uniform(35)));
  const a = leaf(engine, shape, as, "a");
  a.grad = engine.tensor(shape, { data: before });
  const dout = engine.tensor(shape, { data: douts, label: "dout" });
  const tape = new Tape(engine);
  const out = add(tape, a, a);
  await engine.run(tape.forward());
  assertClose(await engine.readF32(out), f32(addRef(as, as)), EXACT, "a + a");
  await engine.run(tape.backward(out, dout));
  // Two dispatches, in order: (before + dout) + dout, each rounded to f32.
  const expected = f32(addRef(f32(addRef(before, douts)), douts));
  assertClose(await engine.readF32(a.grad), expected, EXACT, "a.grad");
  tape.dispose();
  for (const t of [a, dout]) t.dispose();
});

gpuTest(
  "add overwrites an intermediate's gradient and accumulates a repeated one",
  async (engine) => {
    // c = a + b is consumed once by d = c + e (overwrite: a copy); d feeds y = d + d (two
    // accumulate targets on one intermediate). Running backward twice must give the leaves
    // exactly twice the gradient 2·dout of one run, not a growing sum.
    const shape = [3, 8];
    const rng = new Rng(3);
    const [as, bs, es, douts] = [0, 1, 2, 3].map(() => f32(rng.uniform(24)));
    const [a, b, e] = [as, bs, es].map((data, i) => leaf(engine, shape, data, "abe"[i]));
    const dout = engine.tensor(shape, { data: douts, label: "dout" });
    const tape = new Tape(engine);
    const c = add(tape, a, b);
    const d = add(tape, c, e);
    const y = add(tape, d, d);
    await engine.run(tape.forward());
    const dRef = f32(addRef(f32(addRef(as, bs)), es));
    assertClose(await engine.readF32(y), f32(addRef(dRef, dRef)), EXACT, "y");
    const backward = tape.backward(y, dout);
    await engine.run(backward);
    await engine.run(backward);
    const fourDout = douts.map((v) => 4 * v);
    for (const leafTensor of [a, b, e]) {
      assertClose(
        await engine.readF32(leafTensor.grad!),
        fourDout,
        EXACT,
        `${leafTensor.label}.grad`,
      );
    }
    tape.dispose();
    for (const t of [a, b, e, dout]) t.dispose();
  },
);

gpuTest("add rejects tensors of different shapes", (engine) => {
  const tape = new Tape(engine);
  const a = engine.tensor([4, 6]);
  const b = engine.tensor([6, 4]);
  assertThrows(() => add(tape, a, b), ShapeError, "shapes of");
  tape.dispose();
  a.dispose();
  b.dispose();
  return Promise.resolve();
});
