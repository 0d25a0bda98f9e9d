import { add } from "../../kernels/add.ts";
import { softmax } from "../../kernels/softmax.ts";
import type { Engine } from "../../engine/device.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { Tape } from "../../engine/tape.ts";
import { softmaxBackwardRef, softmaxRef } from "../ref/softmax.ts";
import { assertEquals } from "../assert.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, leaf, Rng } from "../util.ts";

// y: exp and a sum of up to 50257 f32 terms in a fixed order; measured relative error ≤ 1e-6
// (y ≤ 1), so a 1e-5 relative bound plus an absolute floor far below any y that matters.
const Y_TOL = { atol: 1e-9, rtol: 1e-5 };
// dx = y·(dy − Σ dy·y): the f32 sum of N products carries ~1e-7·√N·max|dy| absolute error into
// every element (measured ≤ 2e-7 at N = 50257), scaled by y ≤ 1.
const DX_TOL = { atol: 1e-6, rtol: 1e-5 };

Deno.test("softmax reference gradient matches finite differences", () => {
  const rng = new Rng(1);
  const cols = 7;
  const x = rng.normal(3 * cols, 3);
  const dy = rng.uniform(3 * cols);
  const y = softmaxRef(x, cols);
  assertGradMatchesFD(
    (v) => dot(softmaxRef(v, cols), dy),
    x,
    softmaxBackwardRef(y, dy, cols),
    "softmax dx",
    { count: x.length },
  );
});

/**
 * `size` f32 values uniform in [lo, hi). Past 2^20 values they are drawn from a pool of 2^20
 * with a stride that shifts every row (drawing tens of millions one by one takes most of a
 * test's time); rows still differ from each other, so a chunk reading the wrong rows is caught.
 */
function values(size: number, cols: number, rng: Rng, lo: number, hi: number): Float64Array {
  const poolSize = Math.min(size, 1 << 20);
  const pool = f32(rng.uniform(poolSize, lo, hi));
  if (poolSize === size) return pool;
  const out = new Float64Array(size);
  for (let e = 0; e < size; e++) out[e] = pool[(e * 7 + Math.floor(e / cols)) % poolSize];
  return out;
}

/** Forward and accumulated backward against float64, inputs uniform in ±`range`. */
async function check(engine: Engine, shape: number[], range: number, seed: number) {
  const cols = shape[shape.length - 1];
  const size = shape.reduce((a, b) => a * b, 1);
  const rng = new Rng(seed);
  const xs = values(size, cols, rng, -range, range);
  const dys = values(size, cols, rng, -2, 2);
  const before = values(size, cols, rng, -1, 1);
  const x = leaf(engine, shape, xs, "x");
  x.grad = engine.tensor(shape, { data: before });
  const dy = engine.tensor(shape, { data: dys, label: "dy" });
  const tape = new Tape(engine);
  const y = softmax(tape, x);
  await engine.run(tape.forward());
  const ref = softmaxRef(xs, cols);
  assertClose(await engine.readF32(y), ref, Y_TOL, `softmax y ${shape}`);
  await engine.run(tape.backward(y, dy));
  const expected = softmaxBackwardRef(ref, dys, cols);
  for (let i = 0; i < size; i++) expected[i] += before[i];
  assertClose(
    await engine.readF32(x.grad),
    expected,
    DX_TOL,
    `softmax dx (accumulated) ${shape}`,
  );
  tape.dispose();
  x.dispose();
  dy.dispose();
}

// Rows of up to 256 elements, and any rows when there are at least 256 of them, get one
// invocation each; fewer, longer rows one workgroup each. Both read vec4 when the length is a
// multiple of 4, f32 otherwise. Vocabularies: the reference config's 8192, GPT-2's 50257.
const shapes = [
  [1, 1],
  [5, 1],
  [3, 3],
  [2, 3, 17],
  [65, 65],
  [127, 127],
  [7, 256],
  [9, 257],
  [300, 257],
  [5, 1024],
  [3, 4099],
  [16, 8192],
  [8 * 128, 8192],
  [4, 50257],
];
for (const shape of shapes) {
  gpuTest(
    `softmax matches float64 on values in ±8, gradient accumulates (${shape})`,
    (engine) => check(engine, shape, 8, shape.reduce((a, b) => a + b)),
  );
}

// Without the max subtracted, exp(80)·N overflows f32 from N ≈ 6000 and exp(±300) always.
for (const [shape, range] of [[[6, 50257], 80], [[4, 300], 300], [[3, 8192], 300]] as const) {
  gpuTest(
    `softmax is stable on values in ±${range} (${shape})`,
    (engine) => check(engine, [...shape], range, 99),
  );
}

// 700 rows of 50257 floats are 141 MB, over the 128 MiB binding limit: two row chunks (the
// second starts at row 664). Moving 141 MB tensors between JS and the GPU dominates the time,
// so only rows at both ends and around the chunk boundary are read back and checked.
gpuTest("softmax splits a tensor over the binding limit into row chunks", async (engine) => {
  const rows = 700, cols = 50257;
  const rng = new Rng(3);
  const xs = values(rows * cols, cols, rng, -10, 10);
  const dys = values(rows * cols, cols, rng, -2, 2);
  const x = leaf(engine, [rows, cols], xs, "x");
  const dy = engine.tensor([rows, cols], { data: dys, label: "dy" });
  const tape = new Tape(engine);
  const y = softmax(tape, x);
  await engine.run([...tape.forward(), ...tape.backward(y, dy)]);
  // Row ranges starting at multiples of 8 rows (32-byte aligned views).
  for (const [first, count] of [[0, 8], [640, 60]]) {
    const part = (t: Tensor) => engine.readF32(engine.view(t, first * cols, [count, cols]));
    const slice = (v: Float64Array) => v.subarray(first * cols, (first + count) * cols);
    const ref = softmaxRef(slice(xs), cols);
    assertClose(await part(y), ref, Y_TOL, `softmax y rows ${first}..`);
    const dx = softmaxBackwardRef(ref, slice(dys), cols);
    assertClose(await part(x.grad!), dx, DX_TOL, `softmax dx rows ${first}..`);
  }
  tape.dispose();
  x.dispose();
  dy.dispose();
});

gpuTest("softmax overwrites the gradient of an intermediate input", async (engine) => {
  // x is an add's output consumed only by softmax: the tape asks for an overwrite, so running
  // the backward pass twice leaves exactly twice the gradient on the leaf behind the add.
  const shape = [33, 300];
  const rng = new Rng(4);
  const xs = f32(rng.uniform(shape[0] * shape[1], -5, 5));
  const dys = f32(rng.normal(xs.length));
  const x0 = leaf(engine, shape, xs, "x0");
  const zeros = engine.tensor(shape, { label: "zeros" });
  const dy = engine.tensor(shape, { data: dys, label: "dy" });
  const tape = new Tape(engine);
  const y = softmax(tape, add(tape, x0, zeros));
  await engine.run(tape.forward());
  const backward = tape.backward(y, dy);
  await engine.run(backward);
  await engine.run(backward);
  const twice = softmaxBackwardRef(softmaxRef(xs, shape[1]), dys, shape[1]).map((g) => 2 * g);
  assertClose(await engine.readF32(x0.grad!), twice, DX_TOL, "softmax dx (overwritten twice)");
  tape.dispose();
  for (const t of [x0, zeros, dy]) t.dispose();
});

gpuTest("softmax forward and backward are deterministic (same bits twice)", async (engine) => {
  const shape = [16, 50257];
  const rng = new Rng(8);
  const x = leaf(engine, shape, f32(rng.uniform(shape[0] * shape[1], -20, 20)), "x");
  const dy = engine.tensor(shape, { data: f32(rng.normal(shape[0] * shape[1])), label: "dy" });
  const tape = new Tape(engine);
  const y = softmax(tape, x);
  const step = [...tape.forward(), ...tape.backward(y, dy)];
  const bits = async () => [
    new Uint32Array((await engine.readF32(y)).buffer),
    new Uint32Array((await engine.readF32(x.grad!)).buffer),
  ];
  await engine.run(step);
  const first = await bits();
  await engine.run([{ kind: "clear", label: "zero dx", tensor: x.grad! }, ...step]);
  assertEquals(await bits(), first, "bits of y and dx");
  tape.dispose();
  x.dispose();
  dy.dispose();
});
