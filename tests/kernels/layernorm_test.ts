import { add } from "../../kernels/add.ts";
import { layerNorm } from "../../kernels/layernorm.ts";
import type { Engine } from "../../engine/device.ts";
import { Tape } from "../../engine/tape.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { layerNormBackwardRef, layerNormRef } from "../ref/layernorm.ts";
import { addRef } from "../ref/add.ts";
import { ShapeError } from "../../engine/errors.ts";
import { assertEquals, assertThrows } from "../assert.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, leaf, Rng } from "../util.ts";

// GPT-2's layer_norm_epsilon.
const EPS = 1e-5;
// y and dx: f32 sums over the C ≤ 768 entries of a row (mean, variance, mean(g), mean(g·x̂))
// give errors up to 1.6e-6 on |y| ≤ 8 (measured at C = 768); 3× headroom.
const ROW_TOL = { atol: 5e-6, rtol: 5e-6 };
/** dw and db are f32 sums of `rows` terms of order 1: the rounding error grows with the number of
 * terms (measured ≤ 1e-8·rows, e.g. 6e-5 at 8192 rows), plus a few ulps of the result. */
function columnTol(rows: number) {
  return { atol: 1e-6 + 2e-8 * rows, rtol: 1e-6 };
}

Deno.test("layerNorm reference gradients match finite differences", () => {
  const rng = new Rng(1);
  const cols = 5, rows = 3;
  const x = rng.normal(rows * cols, 2);
  const w = rng.uniform(cols, 0.5, 1.5);
  const b = rng.uniform(cols);
  const dy = rng.uniform(rows * cols);
  const grads = layerNormBackwardRef(x, w, dy, cols, EPS);
  const loss = (xv: Float64Array, wv: Float64Array, bv: Float64Array) =>
    dot(layerNormRef(xv, wv, bv, cols, EPS).y, dy);
  assertGradMatchesFD((v) => loss(v, w, b), x, grads.dx, "layerNorm dx");
  assertGradMatchesFD((v) => loss(x, v, b), w, grads.dweight, "layerNorm dweight");
  assertGradMatchesFD((v) => loss(x, w, v), b, grads.dbias, "layerNorm dbias");
});

/** Random layer norm inputs, rounded to f32; x has a non-zero mean so centring matters. */
function inputs(shape: readonly number[], seed: number) {
  const rng = new Rng(seed);
  const cols = shape[shape.length - 1];
  const size = shape.reduce((a, b) => a * b, 1);
  return {
    x: f32(rng.normal(size, 2).map((v) => v + 0.5)),
    weight: f32(rng.uniform(cols, 0.5, 1.5)),
    bias: f32(rng.uniform(cols)),
    dy: f32(rng.uniform(size)),
  };
}

async function readAll(engine: Engine, tensors: Tensor[]): Promise<Float32Array[]> {
  return await Promise.all(tensors.map((t) => engine.readF32(t)));
}

for (
  const shape of [[1, 1], [3, 3], [17, 17], [2, 65], [5, 127], [2, 3, 8], [200, 20], [8192, 17], [
    1024,
    256,
  ], [1024, 768]]
) {
  gpuTest(
    `layerNorm forward and accumulated gradients match float64 (${shape})`,
    async (engine) => {
      const cols = shape[shape.length - 1];
      const data = inputs(shape, shape[0] * 1000 + cols);
      const rng = new Rng(7);
      // Leaf gradients accumulate: start them from non-zero values.
      const before = {
        x: f32(rng.uniform(data.x.length)),
        w: f32(rng.uniform(cols)),
        b: f32(rng.uniform(cols)),
      };
      const x = leaf(engine, shape, data.x, "x");
      const weight = leaf(engine, [cols], data.weight, "w");
      const bias = leaf(engine, [cols], data.bias, "b");
      x.grad = engine.tensor(shape, { data: before.x });
      weight.grad = engine.tensor([cols], { data: before.w });
      bias.grad = engine.tensor([cols], { data: before.b });
      const dy = engine.tensor(shape, { data: data.dy, label: "dy" });
      const tape = new Tape(engine);
      const y = layerNorm(tape, x, weight, bias, EPS);
      await engine.run(tape.forward());
      const ref = layerNormRef(data.x, data.weight, data.bias, cols, EPS);
      assertClose(await engine.readF32(y), ref.y, ROW_TOL, "layerNorm y");
      await engine.run(tape.backward(y, dy));
      const grads = layerNormBackwardRef(data.x, data.weight, data.dy, cols, EPS);
      const [dx, dw, db] = await readAll(engine, [x.grad, weight.grad, bias.grad]);
      const rows = data.x.length / cols;
      assertClose(dx, addRef(before.x, grads.dx), ROW_TOL, "layerNorm dx (accumulated)");
      assertClose(
        dw,
        addRef(before.w, grads.dweight),
        columnTol(rows),
        "layerNorm dweight (accumulated)",
      );
      assertClose(
        db,
        addRef(before.b, grads.dbias),
        columnTol(rows),
        "layerNorm dbias (accumulated)",
      );
      tape.dispose();
      for (const t of [x, weight, bias, dy]) t.dispose();
    },
  );
}

gpuTest("layerNorm overwrites the gradients of intermediate inputs", async (engine) => {
  // x, w and b are each the output of an add consumed only by the layer norm, so the tape asks
  // it to overwrite their gradients. Running the backward pass twice must not double them: the
  // leaves behind the adds then hold exactly twice the gradient.
  const shape = [300, 64];
  const cols = 64;
  const data = inputs(shape, 11);
  const zeros = (n: number) => new Float64Array(n);
  const x0 = leaf(engine, shape, data.x, "x0");
  const w0 = leaf(engine, [cols], data.weight, "w0");
  const b0 = leaf(engine, [cols], data.bias, "b0");
  const frozen = [
    engine.tensor(shape, { data: zeros(data.x.length) }),
    engine.tensor([cols], { data: zeros(cols) }),
    engine.tensor([cols], { data: zeros(cols) }),
  ];
  const dy = engine.tensor(shape, { data: data.dy, label: "dy" });
  const tape = new Tape(engine);
  const x = add(tape, x0, frozen[0]);
  const w = add(tape, w0, frozen[1]);
  const b = add(tape, b0, frozen[2]);
  const y = layerNorm(tape, x, w, b, EPS);
  await engine.run(tape.forward());
  const backward = tape.backward(y, dy);
  await engine.run(backward);
  await engine.run(backward);
  const grads = layerNormBackwardRef(data.x, data.weight, data.dy, cols, EPS);
  const twice = (v: Float64Array) => v.map((g) => 2 * g);
  const [dx, dw, db] = await readAll(engine, [x0.grad!, w0.grad!, b0.grad!]);
  const rows = shape[0];
  assertClose(dx, twice(grads.dx), ROW_TOL, "layerNorm dx (overwritten twice)");
  assertClose(
    dw,
    twice(grads.dweight),
    columnTol(2 * rows),
    "layerNorm dweight (overwritten twice)",
  );
  assertClose(db, twice(grads.dbias), columnTol(2 * rows), "layerNorm dbias (overwritten twice)");
  tape.dispose();
  for (const t of [x0, w0, b0, dy, ...frozen]) t.dispose();
});

gpuTest("layerNorm computes only the gradients asked for, deterministically", async (engine) => {
  const shape = [1024, 768];
  const cols = 768;
  const data = inputs(shape, 5);
  const x = engine.tensor(shape, { data: data.x, label: "x" });
  const weight = engine.tensor([cols], { data: data.weight, label: "w" });
  const bias = leaf(engine, [cols], data.bias, "b");
  const dy = engine.tensor(shape, { data: data.dy, label: "dy" });
  const tape = new Tape(engine);
  const y = layerNorm(tape, x, weight, bias, EPS);
  await engine.run(tape.forward());
  const backward = tape.backward(y, dy);
  // Only db is wanted: one column-sum pass over the row blocks and their total.
  assertEquals(backward.length, 2, "commands for db alone");
  await engine.run(backward);
  const first = await engine.readF32(bias.grad!);
  const grads = layerNormBackwardRef(data.x, data.weight, data.dy, cols, EPS);
  assertClose(first, grads.dbias, columnTol(shape[0]), "layerNorm dbias alone");
  assertEquals(x.grad, undefined, "x.grad");
  assertEquals(weight.grad, undefined, "weight.grad");
  await engine.run([{ kind: "clear", label: "zero db", tensor: bias.grad! }, ...backward]);
  const second = await engine.readF32(bias.grad!);
  assertEquals(new Uint32Array(second.buffer), new Uint32Array(first.buffer), "bits of db");
  tape.dispose();
  for (const t of [x, weight, bias, dy]) t.dispose();
});

gpuTest("layerNorm rejects parameters of the wrong length", (engine) => {
  const tape = new Tape(engine);
  const x = engine.tensor([4, 8]);
  const good = engine.tensor([8]);
  const bad = engine.tensor([7]);
  assertThrows(() => layerNorm(tape, x, bad, good, EPS), ShapeError, "must have shape [8]");
  assertThrows(() => layerNorm(tape, x, good, bad, EPS), ShapeError, "must have shape [8]");
  tape.dispose();
  for (const t of [x, good, bad]) t.dispose();
  return Promise.resolve();
});
