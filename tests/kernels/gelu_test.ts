import assert from "node:assert/strict";
import { gelu } from "../../kernels/gelu.ts";
import { Tape } from "../../engine/tape.ts";
import { geluBackwardRef, geluRef } from "../ref/gelu.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, Rng } from "../util.ts";

// f32 evaluation of tanh and the polynomial: a few ulps of relative error, plus absolute
// slack near zero where y ≈ x/2 cancels nothing but tanh's own error is ~1e-7.
const TOL = { atol: 1e-6, rtol: 1e-5 };

Deno.test("gelu reference gradient matches finite differences", () => {
  const rng = new Rng(1);
  const x = rng.uniform(17, -6, 6);
  const dy = rng.uniform(17);
  assertGradMatchesFD((v) => dot(geluRef(v), dy), x, geluBackwardRef(x, dy), "gelu");
});

// The last case splits 1003 elements into 64-element chunks (a 256-byte binding limit): vec4
// chunks and a ragged scalar one.
const cases: [number, number?][] = [[1], [3], [17], [65], [127], [1024 * 3072], [1003, 256]];
for (const [n, maxBindingBytes] of cases) {
  const chunked = maxBindingBytes ? `, bindings ≤ ${maxBindingBytes} B` : "";
  gpuTest(
    `gelu forward and backward match the float64 reference (n=${n}${chunked})`,
    async (engine) => {
      const rng = new Rng(n);
      const xs = f32(rng.uniform(n, -8, 8));
      const dys = f32(rng.uniform(n));
      const tape = new Tape(engine);
      const x = engine.tensor([n], { data: xs, label: "x" });
      x.requiresGrad = true;
      const dy = engine.tensor([n], { data: dys, label: "dy" });
      const y = gelu(tape, x, { maxBindingBytes });
      const chunks = maxBindingBytes ? Math.ceil((4 * n) / maxBindingBytes) : 1;
      assert.equal(tape.forward().length, chunks, "one dispatch per chunk");
      await engine.run(tape.forward());
      assertClose(await engine.readF32(y), geluRef(xs), TOL, "gelu forward");
      await engine.run(tape.backward(y, dy));
      assertClose(await engine.readF32(x.grad!), geluBackwardRef(xs, dys), TOL, "gelu backward");
      tape.dispose();
      x.dispose();
      dy.dispose();
    },
  );
}

gpuTest("gelu of a tensor over the binding limit runs in aligned chunks", async (engine) => {
  // One binding holds 128 MiB here: 5 elements more split into a full chunk and a short one.
  const n = engine.limits.maxStorageBufferBindingSize / 4 + 5;
  const xs = new Float32Array(n);
  for (let i = 0; i < n; i++) xs[i] = ((i * 7919) % 1601) / 100 - 8;
  const tape = new Tape(engine);
  const x = engine.tensor([n], { data: xs, label: "x" });
  const y = gelu(tape, x);
  assert.equal(tape.forward().length, 2, "two chunks");
  await engine.run(tape.forward());
  const got = await engine.readF32(y);
  // Both ends of both chunks, and the elements around the boundary.
  const boundary = n - 5;
  const at = [0, 1, 2, boundary - 2, boundary - 1, boundary, boundary + 1, n - 1];
  const expected = geluRef(f32(at.map((i) => xs[i])));
  assertClose(at.map((i) => got[i]), expected, TOL, "gelu at chunk edges");
  tape.dispose();
  x.dispose();
});
