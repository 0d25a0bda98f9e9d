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

for (const n of [1, 3, 17, 65, 127, 1024 * 3072]) {
  gpuTest(`gelu forward and backward match the float64 reference (n=${n})`, async (engine) => {
    const rng = new Rng(n);
    const xs = f32(rng.uniform(n, -8, 8));
    const dys = f32(rng.uniform(n));
    const tape = new Tape(engine);
    const x = engine.tensor([n], { data: xs, label: "x" });
    x.requiresGrad = true;
    const dy = engine.tensor([n], { data: dys, label: "dy" });
    const y = gelu(tape, x);
    await engine.run(tape.forward());
    assertClose(await engine.readF32(y), geluRef(xs), TOL, "gelu forward");
    await engine.run(tape.backward(y, dy));
    assertClose(await engine.readF32(x.grad!), geluBackwardRef(xs, dys), TOL, "gelu backward");
    tape.dispose();
    x.dispose();
    dy.dispose();
  });
}
