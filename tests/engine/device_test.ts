// The device, its limits, the pipeline cache, the buffer pool and views.
import assert from "node:assert/strict";
import { LimitError, ShapeError } from "../../engine/errors.ts";
import { sharesMemory } from "../../engine/tensor.ts";
import { gpuTest } from "../util.ts";

gpuTest(
  "the engine names its adapter and requests the adapter's maximum limits",
  async (engine) => {
    const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
    assert.ok(adapter);
    assert.ok(engine.adapterName.length > 0 && engine.adapterName !== "unknown adapter");
    assert.equal(engine.adapterName, adapter.info.description || engine.adapterName);
    const wanted = adapter.limits as unknown as Record<string, number>;
    const got = engine.limits as unknown as Record<string, number>;
    for (const name in adapter.limits) {
      if (typeof wanted[name] === "number") assert.equal(got[name], wanted[name], name);
    }
    // The limits this project depends on, above WebGPU's defaults (128 MiB, 256 MiB).
    assert.equal(engine.limits.maxStorageBufferBindingSize, wanted.maxStorageBufferBindingSize);
    assert.ok(engine.limits.maxBufferSize >= 2 ** 28);
  },
);

gpuTest(
  "the pipeline cache compiles each WGSL text once, even when asked concurrently",
  async (engine) => {
    const device = engine.device;
    const createShaderModule = device.createShaderModule.bind(device);
    let compiles = 0;
    device.createShaderModule = (descriptor) => {
      compiles++;
      return createShaderModule(descriptor);
    };
    try {
      // A text no other test uses, so the cache starts without it.
      const unique = `device_test ${Date.now()}`;
      const code = (k: number) =>
        `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(1)
fn main() { y[0] = ${k}.0; } // ${unique}`;
      const before = engine.pipelines.size;
      // Both requests arrive before the first compilation has finished.
      const first = engine.kernel("a", code(1), ["rw"]);
      const second = engine.kernel("a again", code(1), ["rw"]);
      assert.equal(second, first);
      await Promise.all([first.pipeline, second.pipeline]);
      assert.equal(engine.kernel("a later", code(1), ["rw"]), first);
      const other = engine.kernel("b", code(2), ["rw"]);
      await other.pipeline;
      assert.notEqual(other, first);
      assert.equal(engine.pipelines.size, before + 2);
      assert.equal(compiles, 2);
    } finally {
      device.createShaderModule = createShaderModule;
    }
  },
);

gpuTest("the buffer pool reuses released buffers and accounts for every byte", async (engine) => {
  const allocated = engine.pool.bytesAllocated;
  const inUse = engine.pool.bytesInUse;
  // Sizes are rounded up to 256 bytes, so these distinctive sizes use fresh buckets.
  const a = engine.tensor([1000 * 64 + 1], { label: "a" });
  const size = Math.ceil((1000 * 64 + 1) * 4 / 256) * 256;
  assert.equal(engine.pool.bytesInUse, inUse + size);
  assert.ok(engine.pool.bytesAllocated <= allocated + size);
  const buffer = a.buffer;
  a.dispose();
  assert.equal(engine.pool.bytesInUse, inUse);
  const allocatedAfterRelease = engine.pool.bytesAllocated;
  // Same rounded size: the same GPU buffer comes back, nothing new is allocated, and it is
  // zeroed again as a new tensor must be.
  const b = engine.tensor([1000 * 64 + 2], { label: "b" });
  assert.equal(b.buffer, buffer);
  assert.equal(engine.pool.bytesAllocated, allocatedAfterRelease);
  assert.ok((await engine.readF32(b)).every((x) => x === 0));
  // A one-element tensor still takes the 256-byte quantum.
  const c = engine.tensor([1], { label: "c" });
  assert.equal(engine.pool.bytesInUse, inUse + size + 256);
  b.dispose();
  c.dispose();
  assert.equal(engine.pool.bytesInUse, inUse);
  engine.pool.trim();
  assert.equal(engine.pool.bytesAllocated, engine.pool.bytesInUse);
  assert.throws(() => engine.pool.release(buffer), /released twice/);
});

gpuTest("views must start at an aligned byte offset and stay inside their base", async (engine) => {
  const align = engine.limits.minStorageBufferOffsetAlignment / 4;
  const base = engine.tensor([4 * align], { data: Array.from({ length: 4 * align }, (_, i) => i) });
  assert.throws(
    () => engine.view(base, 1, [4], "misaligned"),
    (e: Error) =>
      e instanceof ShapeError && /misaligned: byte offset 4 is not a multiple/.test(e.message),
  );
  assert.throws(() => engine.view(base, 3 * align, [align + 1]), /outside/);
  const view = engine.view(base, align, [2, align / 2], "second row");
  assert.deepEqual(
    await engine.readF32(view),
    Float32Array.from({ length: align }, (_, i) => align + i),
  );
  // A view owns nothing: disposing it leaves the base and the pool untouched.
  const inUse = engine.pool.bytesInUse;
  view.dispose();
  assert.equal(engine.pool.bytesInUse, inUse);
  assert.equal((await engine.readF32(base))[0], 0);
  base.dispose();
});

gpuTest("tensors share memory exactly when their bytes overlap", (engine) => {
  const align = engine.limits.minStorageBufferOffsetAlignment / 4;
  const base = engine.tensor([4 * align]);
  const other = engine.tensor([4 * align]);
  const [first, second, firstTwo] = [
    engine.view(base, 0, [align]),
    engine.view(base, align, [align]),
    engine.view(base, 0, [2 * align]),
  ];
  const pairs: [string, boolean, boolean][] = [
    ["a tensor and itself", sharesMemory(base, base), true],
    ["a tensor and its view", sharesMemory(base, second), true],
    ["a view and its base", sharesMemory(second, base), true],
    ["overlapping views", sharesMemory(second, firstTwo), true],
    ["adjacent views", sharesMemory(first, second), false],
    ["adjacent views, reversed", sharesMemory(second, first), false],
    ["two tensors", sharesMemory(base, other), false],
  ];
  for (const [what, got, expected] of pairs) assert.equal(got, expected, what);
  base.dispose();
  other.dispose();
  return Promise.resolve();
});

gpuTest(
  "a kernel binding more storage buffers than the device allows is refused by name",
  (engine) => {
    const max = engine.limits.maxStorageBuffersPerShaderStage;
    const kinds = Array.from({ length: max + 1 }, () => "read" as const);
    assert.throws(
      () => engine.kernel("too wide", "@compute @workgroup_size(1) fn main() {}", kinds),
      (e: Error) =>
        e instanceof LimitError &&
        e.message.startsWith(`kernel "too wide" binds ${max + 1} storage buffers, over the ${max}`),
    );
    return Promise.resolve();
  },
);
