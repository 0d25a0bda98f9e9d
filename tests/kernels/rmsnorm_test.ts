import { add } from "../../kernels/add.ts";
import { rmsNorm } from "../../kernels/rmsnorm.ts";
import type { Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import { rmsNormBackwardRef, rmsNormRef } from "../ref/rmsnorm.ts";
import { addRef } from "../ref/add.ts";
import { assertEquals, assertThrows } from "../assert.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, leaf, Rng } from "../util.ts";

// Llama 3.x and SmolLM2's rms_norm_eps (Qwen2.5 uses 1e-6, tested below too).
const EPS = 1e-5;
// y and dx: f32 sums over the C ≤ 768 entries of a row (mean(x²), mean(g·x̂)) and a few
// products: measured ≤ 1.3e-6 on |y| ≤ 8 and ≤ 2.5e-7 on dx at C = 768; as layernorm's.
const ROW_TOL = { atol: 5e-6, rtol: 5e-6 };
/** dw is an f32 sum of `rows` terms of order 1: its rounding error grows with the number of
 * terms (measured ≤ 1e-8·rows), plus a few ulps of the result. */
function columnTol(rows: number) {
  return { atol: 1e-6 + 2e-8 * rows, rtol: 1e-6 };
}

Deno.test("rmsNorm reference gradients match finite differences", () => {
  const rng = new Rng(1);
  const cols = 5, rows = 3;
  const x = rng.normal(rows * cols, 2);
  const w = rng.uniform(cols, 0.5, 1.5);
  const dy = rng.uniform(rows * cols);
  const grads = rmsNormBackwardRef(x, w, dy, cols, EPS);
  const loss = (xv: Float64Array, wv: Float64Array) => dot(rmsNormRef(xv, wv, cols, EPS).y, dy);
  assertGradMatchesFD((v) => loss(v, w), x, grads.dx, "rmsNorm dx", { count: x.length });
  assertGradMatchesFD((v) => loss(x, v), w, grads.dweight, "rmsNorm dweight", { count: cols });
});

/**
 * Random inputs rounded to f32; x has a non-zero mean (RMS norm must not centre it) and is
 * multiplied by `scale`.
 */
function inputs(shape: readonly number[], seed: number, scale = 1) {
  const rng = new Rng(seed);
  const cols = shape[shape.length - 1];
  const size = shape.reduce((a, b) => a * b, 1);
  return {
    x: f32(rng.normal(size, 2).map((v) => (v + 0.5) * scale)),
    weight: f32(rng.uniform(cols, 0.5, 1.5)),
    dy: f32(rng.uniform(size)),
  };
}

/** Forward and accumulated gradients of one shape against the float64 reference. */
async function checkShape(
  engine: Engine,
  shape: number[],
  opts: { eps?: number; scale?: number; maxBindingBytes?: number } = {},
) {
  const eps = opts.eps ?? EPS;
  const cols = shape[shape.length - 1];
  const data = inputs(shape, shape[0] * 1000 + cols, opts.scale);
  const rng = new Rng(7);
  // Leaf gradients accumulate: start them from non-zero values.
  const before = { x: f32(rng.uniform(data.x.length)), w: f32(rng.uniform(cols)) };
  const x = leaf(engine, shape, data.x, "x");
  const weight = leaf(engine, [cols], data.weight, "w");
  x.grad = engine.tensor(shape, { data: before.x });
  weight.grad = engine.tensor([cols], { data: before.w });
  const dy = engine.tensor(shape, { data: data.dy, label: "dy" });
  const tape = new Tape(engine);
  const y = rmsNorm(tape, x, weight, eps, { maxBindingBytes: opts.maxBindingBytes });
  await engine.run(tape.forward());
  assertClose(await engine.readF32(y), rmsNormRef(data.x, data.weight, cols, eps).y, ROW_TOL, "y");
  await engine.run(tape.backward(y, dy));
  const grads = rmsNormBackwardRef(data.x, data.weight, data.dy, cols, eps);
  const rows = data.x.length / cols;
  assertClose(
    await engine.readF32(x.grad),
    addRef(before.x, grads.dx),
    ROW_TOL,
    "dx (accumulated)",
  );
  assertClose(
    await engine.readF32(weight.grad),
    addRef(before.w, grads.dweight),
    columnTol(rows),
    "dweight (accumulated)",
  );
  tape.dispose();
  for (const t of [x, weight, dy]) t.dispose();
}

const shapes = [
  [1, 1],
  [3, 3],
  [17, 17],
  [2, 65],
  [5, 127],
  [2, 3, 8],
  [200, 20],
  [8192, 17],
  [8, 128, 576], // SmolLM2-135M's hidden states at batch 8, sequence 128
  [1024, 768],
];
for (const shape of shapes) {
  gpuTest(
    `rmsNorm forward and accumulated gradients match float64 (${shape})`,
    (engine) => checkShape(engine, shape),
  );
}

// mean(x²) ≈ 4e-6 here, so ε is a fifth of it: misplacing ε (outside the root, or added to the
// RMS) shows. dx grows as 1/RMS (~500), hence relative tolerance matters there.
gpuTest("rmsNorm with Qwen2.5's eps 1e-6 on rows of tiny values", async (engine) => {
  await checkShape(engine, [33, 40], { eps: 1e-6, scale: 1e-3 });
});

// Chunks of 128 rows (64 for a row of 4 vec4s): the last chunk is partial and the dw blocks of
// 64 rows spread over several chunks. Each split must give the unsplit sums, in the same order.
// 100 rows fit in the last binding, but chunks start at multiples of the 64-row block: 64 rows.
const splits = [[300, 20, 128 * 80], [300, 24, 128 * 96], [200, 16, 64 * 64], [300, 20, 100 * 80]];
for (const [rows, cols, maxBindingBytes] of splits) {
  gpuTest(
    `rmsNorm split into row chunks matches float64 ([${rows}, ${cols}], binding ${maxBindingBytes} B)`,
    (engine) => checkShape(engine, [rows, cols], { maxBindingBytes }),
  );
}

gpuTest("rmsNorm gives the same bits split into row chunks as unsplit", async (engine) => {
  const shape = [300, 24];
  const data = inputs(shape, 3);
  const results: Uint32Array[][] = [];
  for (const maxBindingBytes of [undefined, 128 * 96]) {
    const x = leaf(engine, shape, data.x, "x");
    const weight = leaf(engine, [24], data.weight, "w");
    const dy = engine.tensor(shape, { data: data.dy, label: "dy" });
    const tape = new Tape(engine);
    const y = rmsNorm(tape, x, weight, EPS, { maxBindingBytes });
    // Unsplit, one dispatch; split, 3 chunks of at most 128 rows.
    assertEquals(tape.forward().length, maxBindingBytes ? 3 : 1, "forward dispatches");
    await engine.run([...tape.forward(), ...tape.backward(y, dy)]);
    const read = await Promise.all([y, x.grad!, weight.grad!].map((t) => engine.readF32(t)));
    results.push(read.map((v) => new Uint32Array(v.buffer)));
    tape.dispose();
    for (const t of [x, weight, dy]) t.dispose();
  }
  assertEquals(results[1], results[0], "bits of y, dx, dw");
});

gpuTest("rmsNorm overwrites the gradients of intermediate inputs", async (engine) => {
  // x and w are each an add's output consumed only by the norm, so the tape asks it to overwrite
  // their gradients: running the backward pass twice must give the leaves exactly twice.
  const shape = [300, 64];
  const cols = 64;
  const data = inputs(shape, 11);
  const x0 = leaf(engine, shape, data.x, "x0");
  const w0 = leaf(engine, [cols], data.weight, "w0");
  const zeros = [engine.tensor(shape), engine.tensor([cols])];
  const dy = engine.tensor(shape, { data: data.dy, label: "dy" });
  const tape = new Tape(engine);
  const y = rmsNorm(tape, add(tape, x0, zeros[0]), add(tape, w0, zeros[1]), EPS);
  await engine.run(tape.forward());
  const backward = tape.backward(y, dy);
  await engine.run(backward);
  await engine.run(backward);
  const grads = rmsNormBackwardRef(data.x, data.weight, data.dy, cols, EPS);
  const twice = (v: Float64Array) => v.map((g) => 2 * g);
  assertClose(await engine.readF32(x0.grad!), twice(grads.dx), ROW_TOL, "dx (twice)");
  assertClose(
    await engine.readF32(w0.grad!),
    twice(grads.dweight),
    columnTol(2 * shape[0]),
    "dw (twice)",
  );
  tape.dispose();
  for (const t of [x0, w0, dy, ...zeros]) t.dispose();
});

gpuTest("rmsNorm computes only the gradients asked for, deterministically", async (engine) => {
  const shape = [1024, 576];
  const cols = 576;
  const data = inputs(shape, 5);
  const x = engine.tensor(shape, { data: data.x, label: "x" });
  const weight = leaf(engine, [cols], data.weight, "w");
  const dy = engine.tensor(shape, { data: data.dy, label: "dy" });
  const tape = new Tape(engine);
  const y = rmsNorm(tape, x, weight, EPS);
  await engine.run(tape.forward());
  const backward = tape.backward(y, dy);
  // Only dw is wanted: one column-sum pass over the row blocks and their total.
  assertEquals(backward.length, 2, "commands for dw alone");
  await engine.run(backward);
  const first = await engine.readF32(weight.grad!);
  const grads = rmsNormBackwardRef(data.x, data.weight, data.dy, cols, EPS);
  assertClose(first, grads.dweight, columnTol(shape[0]), "dw alone");
  assertEquals(x.grad, undefined, "x.grad");
  await engine.run([{ kind: "clear", label: "zero dw", tensor: weight.grad! }, ...backward]);
  const second = await engine.readF32(weight.grad!);
  assertEquals(new Uint32Array(second.buffer), new Uint32Array(first.buffer), "bits of dw");
  tape.dispose();
  for (const t of [x, weight, dy]) t.dispose();
});

gpuTest("rmsNorm rejects a weight of the wrong length and a bad eps", (engine) => {
  const tape = new Tape(engine);
  const x = engine.tensor([4, 8]);
  const good = engine.tensor([8]);
  const bad = engine.tensor([7]);
  assertThrows(() => rmsNorm(tape, x, bad, EPS), ShapeError, "must have shape [8]");
  assertThrows(() => rmsNorm(tape, x, good, -1), RangeError, "eps -1");
  assertThrows(() => rmsNorm(tape, x, good, NaN), RangeError, "finite");
  tape.dispose();
  for (const t of [x, good, bad]) t.dispose();
  return Promise.resolve();
});
