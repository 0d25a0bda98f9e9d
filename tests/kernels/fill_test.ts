import assert from "node:assert/strict";
import type { Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import { copy, fill, scale } from "../../kernels/fill.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, Rng } from "../util.ts";

// α·x in f32 is one correctly rounded product: relative error ≤ 2⁻²⁴ ≈ 6e-8.
const SCALE_TOL = { atol: 0, rtol: 1.2e-7 };
// dx + α·dy rounds twice and may cancel: absolute error ≈ 1e-7 of the terms' size (≈ 1 here).
const ACCUMULATE_TOL = { atol: 2e-7, rtol: 2e-7 };

/** Float64 reference: y = α·x, and dx = α·dy (its vector-Jacobian product). */
function scaleRef(x: ArrayLike<number>, alpha: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = alpha * x[i];
  return y;
}

function bitsOf(values: Float32Array): Uint32Array {
  return new Uint32Array(values.buffer, values.byteOffset, values.length);
}

function f32Bits(value: number): number {
  return new Uint32Array(Float32Array.of(value).buffer)[0];
}

Deno.test("scale reference gradient matches finite differences", () => {
  const rng = new Rng(2);
  const x = rng.uniform(17);
  const dy = rng.uniform(17);
  assertGradMatchesFD((v) => dot(scaleRef(v, -0.3), dy), x, scaleRef(dy, -0.3), "scale");
});

for (const n of [1, 3, 17, 65, 127, 1024 * 768]) {
  gpuTest(`fill sets every element and nothing else (n=${n})`, async (engine) => {
    // A view in the middle of a larger buffer: the fill must stop at both of its ends.
    const align = engine.limits.minStorageBufferOffsetAlignment / 4;
    const base = engine.tensor([align + n + align], {
      data: new Float32Array(align + n + align).fill(9),
    });
    const middle = engine.view(base, align, [n], "middle");
    await engine.run(fill(engine, middle, 1.5));
    const got = await engine.readF32(base);
    const expected = new Float32Array(align + n + align).fill(9).fill(1.5, align, align + n);
    assert.deepEqual(bitsOf(got), bitsOf(expected));
    base.dispose();
  });
}

gpuTest("fill writes the exact bits of special f32 values and of u32 values", async (engine) => {
  for (const value of [-0, -Infinity, Infinity, NaN, 3.4e38, 1e-45]) {
    const t = engine.tensor([17], { data: new Float32Array(17).fill(2) });
    await engine.run(fill(engine, t, value));
    const bits = bitsOf(await engine.readF32(t));
    assert.ok(bits.every((b) => b === f32Bits(value)), `fill ${value}`);
    t.dispose();
  }
  for (const value of [7, 0xffffffff, 0]) {
    const ids = engine.tensor([65], { dtype: "u32", data: new Uint32Array(65).fill(3) });
    await engine.run(fill(engine, ids, value));
    assert.ok((await engine.read(ids)).every((b) => b === value), `fill u32 ${value}`);
    ids.dispose();
  }
});

gpuTest("fill with zero bits is a clear; u32 fills refuse non-u32 values", async (engine) => {
  const t = engine.tensor([5]);
  const ids = engine.tensor([5], { dtype: "u32" });
  assert.deepEqual(fill(engine, t, 0).map((c) => c.kind), ["clear"]);
  assert.deepEqual(fill(engine, t, -0).map((c) => c.kind), ["dispatch"]);
  assert.throws(() => fill(engine, ids, 1.5), ShapeError);
  assert.throws(() => fill(engine, ids, -1), ShapeError);
  assert.throws(() => fill(engine, ids, 2 ** 32), ShapeError);
  t.dispose();
  ids.dispose();
  await engine.sync();
});

gpuTest("copy moves a tensor's values and refuses other sizes or dtypes", async (engine) => {
  const values = f32(new Rng(4).uniform(127));
  const src = engine.tensor([127], { data: values, label: "src" });
  const dst = engine.tensor([127, 1], { label: "dst" });
  await engine.run([copy(src, dst)]);
  assertClose(await engine.readF32(dst), values, { atol: 0, rtol: 0 }, "copy");
  const shorter = engine.tensor([126], { label: "shorter" });
  const ids = engine.tensor([127], { dtype: "u32", label: "ids" });
  assert.throws(() => copy(src, shorter), /cannot copy src\[127\] into shorter\[126\]/);
  assert.throws(() => copy(src, ids), ShapeError);
  // A hand-built Copy of mismatched sizes is refused by run before anything is encoded.
  await assert.rejects(
    engine.run([{ kind: "copy", label: "bad copy", src, dst: shorter }]),
    ShapeError,
  );
  for (const t of [src, dst, shorter, ids]) t.dispose();
});

/** x (leaf, with a random initial grad) → s = α·x → y = β·s; backward from y with dy. */
async function scaleChain(
  engine: Engine,
  n: number,
  alpha: number,
  beta: number,
  backwardRuns: number,
  maxBindingBytes?: number,
) {
  const rng = new Rng(n);
  const xs = f32(rng.uniform(n));
  const dys = f32(rng.uniform(n));
  const initialGrad = f32(rng.uniform(n));
  const tape = new Tape(engine);
  const x = engine.tensor([n], { data: xs, label: "x" });
  x.requiresGrad = true;
  x.grad = engine.tensor([n], { data: initialGrad, label: "grad x" });
  const dy = engine.tensor([n], { data: dys, label: "dy" });
  const s = scale(tape, x, alpha, { maxBindingBytes });
  const y = scale(tape, s, beta, { maxBindingBytes });
  const backward = tape.backward(y, dy);
  // One dispatch per binding chunk, for each of the two ops, forward and backward.
  const chunks = maxBindingBytes ? Math.ceil((4 * n) / maxBindingBytes) : 1;
  assert.equal(tape.forward().length, 2 * chunks, "forward dispatches");
  assert.equal(backward.length, 2 * chunks, "backward dispatches");
  await engine.run(tape.forward());
  for (let r = 0; r < backwardRuns; r++) await engine.run(backward);
  const result = {
    s: await engine.readF32(s),
    y: await engine.readF32(y),
    dx: await engine.readF32(x.grad),
    xs,
    dys,
    initialGrad,
  };
  tape.dispose();
  x.dispose();
  dy.dispose();
  return result;
}

// 1024×768 is a GPT-2 activation (T×C, vec4 path); elementwise work does not depend on the
// shape, so the 4C-wide activations would only add time. The last case splits 1003 elements
// into 64-element chunks (a 256-byte binding limit): vec4 chunks and a ragged scalar one.
const cases: [number, number?][] = [[1], [3], [17], [65], [127], [1024 * 768], [1003, 256]];
for (const [n, maxBindingBytes] of cases) {
  const chunked = maxBindingBytes ? `, bindings ≤ ${maxBindingBytes} B` : "";
  gpuTest(
    `scale forward and backward match the float64 reference (n=${n}${chunked})`,
    async (engine) => {
      const [alpha, beta] = [Math.fround(-0.3), Math.fround(2.5)];
      // Two backward runs: x.grad (a leaf) accumulates twice onto its initial value, while s's
      // gradient (an intermediate with one consumer) is overwritten each run, not doubled.
      const r = await scaleChain(engine, n, alpha, beta, 2, maxBindingBytes);
      assertClose(r.s, scaleRef(r.xs, alpha), SCALE_TOL, "scale forward");
      assertClose(r.y, scaleRef(f32(scaleRef(r.xs, alpha)), beta), SCALE_TOL, "scale of scale");
      const ds = f32(scaleRef(r.dys, beta));
      const dxOnce = f32(scaleRef(ds, alpha));
      const expected = r.initialGrad.map((g, i) => g + 2 * dxOnce[i]);
      assertClose(r.dx, expected, ACCUMULATE_TOL, "scale backward, accumulated twice");
    },
  );
}

gpuTest("scale refuses α that is not finite in f32 and u32 inputs", async (engine) => {
  const tape = new Tape(engine);
  const x = engine.tensor([3]);
  const ids = engine.tensor([3], { dtype: "u32" });
  assert.throws(() => scale(tape, x, 1e39), /not finite/);
  assert.throws(() => scale(tape, ids, 2), /not f32/);
  tape.dispose();
  x.dispose();
  ids.dispose();
  await engine.sync();
});
