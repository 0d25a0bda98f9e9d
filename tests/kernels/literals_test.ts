// WGSL literals: a decimal literal compiles to the nearest f32 (Math.fround), a bits literal to
// exactly the given f32, -0, ±∞ and NaN included. Checked by kernels that store them.
import assert from "node:assert/strict";
import type { Engine } from "../../engine/device.ts";
import { declareKernel } from "../../kernels/kernel.ts";
import { f32Bits, f32BitsLiteral, floatLiteral } from "../../kernels/literals.ts";
import { gpuTest } from "../util.ts";

/** The f32 values a kernel stores for the WGSL expressions `values` (one invocation). */
async function stored(engine: Engine, values: string[], asConst: boolean): Promise<Float32Array> {
  const out = engine.tensor([values.length], { label: "literals" });
  const code = asConst
    ? `${values.map((v, i) => `const C${i}: f32 = ${v};`).join("\n")}
@compute @workgroup_size(1)
fn main() { ${values.map((_, i) => `out[${i}] = C${i};`).join(" ")} }`
    : `@compute @workgroup_size(1)
fn main() { ${values.map((v, i) => `let v${i} = ${v}; out[${i}] = v${i};`).join(" ")} }`;
  const kernel = declareKernel(engine, "literals", [["out", "rw", "array<f32>"]], code);
  await engine.run([engine.dispatch("literals", kernel, [out], 1)]);
  const got = await engine.readF32(out);
  out.dispose();
  return got;
}

const bits = (values: ArrayLike<number>) => Array.from(values, f32Bits);

gpuTest("a decimal literal is the nearest f32, in a const and in a let", async (engine) => {
  // Values that are not f32s (rounded), integers (need a point), tiny and huge ones.
  const values = [0.1, 1 / 3, 16 / Math.sqrt(8), 1e-5, 2, 768, 1 / 50257, 3.4e38, -1.5e-40, 0];
  const literals = values.map(floatLiteral);
  assert.ok(literals.every((l) => /[.e]/.test(l)), literals.join(" "));
  for (const asConst of [true, false]) {
    assert.deepEqual(bits(await stored(engine, literals, asConst)), bits(values));
  }
});

gpuTest("a bits literal is exactly its f32, -0, ±∞ and NaN included", async (engine) => {
  const values = [-0, Infinity, -Infinity, NaN, 1e-45, -0.3, 3.4028234663852886e38];
  const got = await stored(engine, values.map(f32BitsLiteral), false);
  assert.deepEqual(bits(got), bits(values));
  // The decimal form cannot say -0: it is why the bits form exists.
  assert.equal(floatLiteral(-0), "0.0");
});
