// Each failure the engine can meet ends in an error that names the cause and what to do.
import assert from "node:assert/strict";
import { Engine } from "../../engine/device.ts";
import {
  DeviceLostError,
  GpuError,
  LimitError,
  NoAdapterError,
  ShaderCompileError,
  ShapeError,
} from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import { copy } from "../../kernels/fill.ts";
import { gelu } from "../../kernels/gelu.ts";
import { gpuTest } from "../util.ts";

Deno.test("without any GPU driver Engine.create says how to install one", async () => {
  // Hiding only the Vulkan ICDs is not enough: wgpu then falls back to its OpenGL back end and
  // finds Mesa's llvmpipe through EGL. Hiding the glvnd EGL vendor files as well leaves no
  // adapter at all, as on a machine without mesa-vulkan-drivers and Mesa's EGL.
  const script = `
    import { Engine } from ${
    JSON.stringify(new URL("../../engine/device.ts", import.meta.url).href)
  };
    try {
      await Engine.create();
      console.log("got an adapter");
    } catch (e) {
      console.log(e.name + ": " + e.message);
    }`;
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", script],
    env: {
      VK_ICD_FILENAMES: "/nonexistent.json",
      VK_DRIVER_FILES: "/nonexistent.json",
      __EGL_VENDOR_LIBRARY_FILENAMES: "/nonexistent.json",
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(output.stdout);
  assert.match(stdout, /^NoAdapterError: No WebGPU adapter found/, stdout);
  assert.match(stdout, /apt-get install -y mesa-vulkan-drivers/);
  assert.match(new NoAdapterError().message, /scripts\/setup\.sh/);
  // In a browser tab the advice is about the browser, not about Vulkan drivers.
  const inBrowser = new NoAdapterError("browser").message;
  assert.match(inBrowser, /^No WebGPU adapter in this browser/);
  assert.match(inBrowser, /--enable-unsafe-webgpu/);
});

gpuTest("wrong lengths and shapes are ShapeErrors naming the tensors", async (engine) => {
  const x = engine.tensor([2, 3], { label: "x" });
  assert.throws(() => engine.write(x, [1, 2, 3]), /x\[2×3\]: got 3 values for 6 elements/);
  assert.throws(() => engine.tensor([0, 3], { label: "empty" }), ShapeError);
  assert.throws(() => engine.tensor([2.5], { label: "fractional" }), ShapeError);
  assert.throws(() => engine.view(x, 4, [4]), /outside x\[2×3\]/);
  const y = engine.tensor([5], { label: "y" });
  assert.throws(() => copy(x, y), ShapeError);
  const tape = new Tape(engine);
  x.requiresGrad = true;
  const g = gelu(tape, x);
  assert.throws(() => tape.backward(g, y), /upstream y\[5\] does not match gelu\(x\)\[2×3\]/);
  tape.dispose();
  x.dispose();
  y.dispose();
  await engine.sync();
});

gpuTest("a tensor over maxBufferSize is a LimitError before any allocation", async (engine) => {
  const before = engine.pool.bytesAllocated;
  const elements = Math.floor(engine.limits.maxBufferSize / 4) + 1;
  assert.throws(
    () => engine.tensor([elements], { label: "huge" }),
    (e: Error) => e instanceof LimitError && /huge: .*maxBufferSize/.test(e.message),
  );
  assert.equal(engine.pool.bytesAllocated, before);
  await engine.sync();
});

gpuTest(
  "binding more than maxStorageBufferBindingSize is a LimitError from dispatch",
  async (engine) => {
    // 128 MiB + 4 bytes here: allocatable (under maxBufferSize) but not bindable in one piece.
    // (The ops split such tensors themselves; this is the engine's own check.)
    const elements = engine.limits.maxStorageBufferBindingSize / 4 + 1;
    const big = engine.tensor([elements], { label: "big" });
    const code = `@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(1) fn main() { x[0] = 1.0; }`;
    const kernel = engine.kernel("write one", code, ["rw"]);
    assert.throws(
      () => engine.dispatch("write one", kernel, [big], 1),
      (e: Error) =>
        e instanceof LimitError &&
        /write one: big\[\d+\] is \d+ bytes, over .*split it by rows/.test(e.message),
    );
    big.dispose();
    engine.pool.trim();
    await engine.sync();
  },
);

gpuTest("invalid WGSL is a ShaderCompileError showing the numbered source", async (engine) => {
  const code = `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  y[gid.x] = undefined_name * 2.0;
}`;
  const kernel = engine.kernel("broken", code, ["rw"]);
  const error = await kernel.pipeline.then(() => null, (e) => e);
  assert.ok(error instanceof ShaderCompileError, String(error));
  assert.match(error.message, /kernel "broken"/);
  assert.match(error.message, /undefined_name/);
  assert.ok(error.message.includes("\n   4 |   y[gid.x] = undefined_name * 2.0;\n"), error.message);
  assert.ok(error.message.includes("\n   1 | @group(0)"), error.message);
  // Running a dispatch of that kernel rejects with the same error.
  const y = engine.tensor([64], { label: "y" });
  await assert.rejects(engine.run([engine.dispatch("broken", kernel, [y], 1)]), ShaderCompileError);
  y.dispose();
});

gpuTest("a WebGPU validation error in a run is a GpuError naming the run", async (engine) => {
  const kernel = engine.kernel(
    "write one",
    `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(1)
fn main() { y[0] = 1.0; }`,
    ["rw"],
  );
  await kernel.pipeline;
  const buffer = engine.device.createBuffer({ size: 256, usage: GPUBufferUsage.STORAGE });
  const dispatch = engine.dispatch("write into a destroyed buffer", kernel, [buffer], 1);
  buffer.destroy();
  await assert.rejects(
    engine.run([dispatch], "step 7"),
    (e: Error) =>
      e instanceof GpuError &&
      /validation error in step 7 \[write into a destroyed buffer\]/.test(e.message),
  );
  // The engine is still usable afterwards.
  const t = engine.tensor([1], { data: [3] });
  assert.deepEqual(await engine.readF32(t), Float32Array.of(3));
  t.dispose();
});

Deno.test({
  name: "after the device is lost the next run is a DeviceLostError",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const engine = await Engine.create();
    const t = engine.tensor([4], { label: "t" });
    engine.device.destroy();
    await engine.device.lost;
    await assert.rejects(engine.run([copy(t, t)]), DeviceLostError);
    await assert.rejects(engine.sync(), /WebGPU device lost \(destroyed\)/);
    await assert.rejects(engine.readF32(t), DeviceLostError);
  },
});
