// A kernel declared from one list of bindings: the declarations and the bind-group layout come
// from the same entries, in order, for every kind of binding.
import assert from "node:assert/strict";
import { type Binding, bindingDeclarations, bindingKinds } from "../../engine/bindings.ts";
import { declareKernel } from "../../kernels/kernel.ts";
import { gpuTest } from "../util.ts";

Deno.test("one binding list gives the declarations and the kinds, in order", () => {
  const bindings: Binding[] = [
    ["x", "read", "array<vec4f>"],
    ["y", "rw", "array<f32>"],
    ["params", "uniform", "Params"],
    ["a", "tex-read"],
    ["b", "tex-write"],
  ];
  assert.equal(
    bindingDeclarations(bindings),
    [
      "@group(0) @binding(0) var<storage, read> x: array<vec4f>;",
      "@group(0) @binding(1) var<storage, read_write> y: array<f32>;",
      "@group(0) @binding(2) var<uniform> params: Params;",
      "@group(0) @binding(3) var a: texture_storage_2d<rgba32float, read>;",
      "@group(0) @binding(4) var b: texture_storage_2d<rgba32float, write>;",
    ].join("\n"),
  );
  assert.deepEqual(bindingKinds(bindings), ["read", "rw", "uniform", "tex-read", "tex-write"]);
});

gpuTest("a declared kernel binds its resources in the list's order", async (engine) => {
  // y = scale·x + b, with x read, b read, scale a uniform, y written: swapped bindings would
  // give other values, mismatched kinds a validation error.
  const x = engine.tensor([8], { data: [1, 2, 3, 4, 5, 6, 7, 8], label: "x" });
  const b = engine.tensor([8], { data: [8, 7, 6, 5, 4, 3, 2, 1], label: "b" });
  const y = engine.tensor([8], { label: "y" });
  const scale = engine.uniform(16, "scale");
  scale.write(Float32Array.of(3, 0, 0, 0));
  const kernel = declareKernel(
    engine,
    "axpb",
    [
      ["x", "read", "array<vec4f>"],
      ["scale", "uniform", "Scale"],
      ["y", "rw", "array<vec4f>"],
      ["b", "read", "array<f32>"],
    ],
    `
struct Scale { s: f32, pad0: f32, pad1: f32, pad2: f32 }
@compute @workgroup_size(2)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x;
  y[i] = scale.s * x[i] + vec4f(b[4u * i], b[4u * i + 1u], b[4u * i + 2u], b[4u * i + 3u]);
}`,
  );
  await engine.run([engine.dispatch("axpb", kernel, [x, scale.buffer, y, b], 1)]);
  assert.deepEqual(Array.from(await engine.readF32(y)), [11, 13, 15, 17, 19, 21, 23, 25]);
  for (const t of [x, b, y]) t.dispose();
  engine.releaseUniform(scale);
});
