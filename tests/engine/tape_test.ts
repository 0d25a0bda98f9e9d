// Autograd properties of the tape, on gelu, scale and two small ops defined here (add, sum).
import assert from "node:assert/strict";
import type { Command, Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape, zeroGrad } from "../../engine/tape.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { scale } from "../../kernels/fill.ts";
import { gelu } from "../../kernels/gelu.ts";
import { grid1d } from "../../kernels/grid.ts";
import { geluBackwardRef, geluRef } from "../ref/gelu.ts";
import { assertClose, f32, gpuTest, Rng } from "../util.ts";

// gelu's own f32 error (see gelu_test.ts), plus one or two roundings where gradients are summed.
const TOL = { atol: 2e-6, rtol: 1e-5 };

/** Test-only op: y = a + b; the two gradients are written by separate dispatches. */
function add(tape: Tape, a: Tensor, b: Tensor): Tensor {
  const engine = tape.engine;
  const n = a.size;
  if (b.size !== n) throw new ShapeError(`add: ${a} and ${b} differ`);
  const y = tape.tensor(a.shape, `${a.label}+${b.label}`);
  const grid = grid1d(n, 64);
  const header = `@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${grid.index};
  if (i >= ${n}u) { return; }`;
  const forward = engine.kernel(
    "add",
    `@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${header}
  y[i] = a[i] + b[i];
}`,
    ["read", "read", "rw"],
  );
  tape.record({
    name: "add",
    inputs: [a, b],
    outputs: [y],
    forward: [engine.dispatch("add", forward, [a, b, y], grid.workgroups)],
    backward: (ctx) =>
      [0, 1].flatMap((i): Command[] => {
        const target = ctx.gradInput(i);
        if (!target) return [];
        const kernel = engine.kernel(
          "add_backward",
          `@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
${header}
  dx[i] = ${target.accumulate ? "dx[i] + " : ""}dy[i];
}`,
          ["read", "rw"],
        );
        const label = `add backward ${"ab"[i]}`;
        return [
          engine.dispatch(label, kernel, [ctx.gradOutput(0), target.tensor], grid.workgroups),
        ];
      }),
  });
  return y;
}

/** Test-only op: s = Σ x, summed in index order by one invocation (deterministic). */
function sum(tape: Tape, x: Tensor): Tensor {
  const engine = tape.engine;
  const n = x.size;
  const s = tape.tensor([1], `sum ${x.label}`);
  const forward = engine.kernel(
    "sum",
    `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> s: array<f32>;
@compute @workgroup_size(1)
fn main() {
  var total = 0.0;
  for (var i = 0u; i < ${n}u; i++) { total += x[i]; }
  s[0] = total;
}`,
    ["read", "rw"],
  );
  const grid = grid1d(n, 64);
  tape.record({
    name: "sum",
    inputs: [x],
    outputs: [s],
    forward: [engine.dispatch("sum", forward, [x, s], 1)],
    backward: (ctx) => {
      const dx = ctx.gradInput(0);
      if (!dx) return [];
      // When s is the loss its gradient is the constant 1 and need not be read.
      const ds = ctx.gradOutputIsUnit(0) ? "1.0" : "ds[0]";
      const kernel = engine.kernel(
        "sum_backward",
        `@group(0) @binding(0) var<storage, read> ds: array<f32>;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${grid.index};
  if (i >= ${n}u) { return; }
  dx[i] = ${dx.accumulate ? "dx[i] + " : ""}${ds};
}`,
        ["read", "rw"],
      );
      return [
        engine.dispatch("sum backward", kernel, [ctx.gradOutput(0), dx.tensor], grid.workgroups),
      ];
    },
  });
  return s;
}

function leaf(engine: Engine, values: ArrayLike<number>, label: string, trainable = true): Tensor {
  const t = engine.tensor([values.length], { data: values, label });
  t.requiresGrad = trainable;
  return t;
}

function labels(commands: readonly Command[]): string[] {
  return commands.map((c) => c.label);
}

gpuTest("a tensor consumed by several ops receives the sum of their gradients", async (engine) => {
  const xs = f32(new Rng(1).uniform(65, -4, 4));
  const tape = new Tape(engine);
  const x = leaf(engine, xs, "x");
  // h feeds two scales (its gradient is assigned by one and accumulated by the other) and an
  // add that receives it twice; x itself feeds gelu and a scale (a leaf accumulating twice).
  const h = gelu(tape, x);
  const y = add(tape, add(tape, scale(tape, h, 2), scale(tape, h, -0.5)), add(tape, h, h));
  const loss = sum(tape, add(tape, y, scale(tape, x, 3)));
  await engine.run(tape.forward());
  await engine.run(tape.backward(loss));
  const dh = 2 - 0.5 + 2;
  const expected = geluBackwardRef(xs, new Float64Array(65).fill(dh)).map((g) => g + 3);
  assertClose(await engine.readF32(x.grad!), expected, TOL, "dloss/dx");
  const forwardRef = geluRef(xs).reduce((s, g, i) => s + dh * g + 3 * xs[i], 0);
  // The loss sums 65 terms of size ≈ 10 in f32: ~65 roundings of 1e-6.
  assertClose(await engine.readF32(loss), [forwardRef], { atol: 1e-4, rtol: 1e-6 }, "loss");
  tape.dispose();
  x.dispose();
});

gpuTest(
  "an upstream gradient scales the backward pass (the output is not the loss)",
  async (engine) => {
    const xs = f32(new Rng(2).uniform(17));
    const tape = new Tape(engine);
    const x = leaf(engine, xs, "x");
    const s = sum(tape, gelu(tape, x));
    const upstream = engine.tensor([1], { data: [2.5], label: "upstream" });
    await engine.run([...tape.forward(), ...tape.backward(s, upstream)]);
    const expected = geluBackwardRef(xs, new Float64Array(17).fill(2.5));
    assertClose(await engine.readF32(x.grad!), expected, TOL, "dx with upstream 2.5");
    tape.dispose();
    x.dispose();
    upstream.dispose();
  },
);

gpuTest("leaf gradients accumulate across backward runs until zeroGrad", async (engine) => {
  const xs = f32(new Rng(3).uniform(17));
  const tape = new Tape(engine);
  const x = leaf(engine, xs, "x");
  const loss = sum(tape, gelu(tape, x));
  const step = [...tape.forward(), ...tape.backward(loss)];
  const once = geluBackwardRef(xs, new Float64Array(17).fill(1));
  await engine.run(step);
  await engine.run(step);
  assertClose(await engine.readF32(x.grad!), once.map((g) => 2 * g), TOL, "two runs");
  await engine.run([...zeroGrad([x]), ...step]);
  assertClose(await engine.readF32(x.grad!), once, TOL, "after zeroGrad");
  tape.dispose();
  x.dispose();
});

gpuTest("frozen inputs get no gradient and no backward dispatch", async (engine) => {
  const rng = new Rng(4);
  const tape = new Tape(engine);
  const frozen = leaf(engine, f32(rng.uniform(17)), "frozen", false);
  const ws = f32(rng.uniform(17));
  const w = leaf(engine, ws, "w");
  const loss = sum(tape, add(tape, gelu(tape, frozen), gelu(tape, w)));
  const backward = tape.backward(loss);
  await engine.run([...tape.forward(), ...backward]);
  assert.equal(frozen.grad, undefined);
  const names = labels(backward);
  assert.equal(names.filter((l) => l === "gelu backward").length, 1, names.join(", "));
  assert.ok(!names.includes("add backward a") && names.includes("add backward b"), names.join());
  const expected = geluBackwardRef(ws, new Float64Array(17).fill(1));
  assertClose(await engine.readF32(w.grad!), expected, TOL, "dloss/dw");
  tape.dispose();
  frozen.dispose();
  w.dispose();
});

gpuTest("ops recorded under noGrad have no backward", async (engine) => {
  const xs = f32(new Rng(5).uniform(17));
  const tape = new Tape(engine);
  const x = leaf(engine, xs, "x");
  const constant = tape.noGrad(() => gelu(tape, x));
  assert.equal(constant.requiresGrad, false);
  assert.throws(() => tape.backward(tape.noGrad(() => sum(tape, constant))), /does not depend/);
  const loss = sum(tape, add(tape, constant, scale(tape, x, 3)));
  const backward = tape.backward(loss);
  assert.ok(!labels(backward).includes("gelu backward"), labels(backward).join(", "));
  await engine.run([...tape.forward(), ...backward]);
  assertClose(await engine.readF32(x.grad!), new Float64Array(17).fill(3), TOL, "only 3·x");
  tape.dispose();
  x.dispose();
});

gpuTest("backward from a non-scalar needs an upstream gradient of its size", async (engine) => {
  const tape = new Tape(engine);
  const x = leaf(engine, [1, 2, 3], "x");
  const y = gelu(tape, x);
  assert.throws(() => tape.backward(y), ShapeError);
  assert.throws(() => tape.backward(y), /needs an upstream gradient/);
  const wrong = engine.tensor([2], { label: "wrong" });
  assert.throws(() => tape.backward(y, wrong), ShapeError);
  tape.dispose();
  x.dispose();
  wrong.dispose();
  await engine.sync();
});

gpuTest("dispose returns every byte to the pool", async (engine) => {
  const startPool = engine.pool.bytesInUse;
  const startEngine = engine.bytesInUse;
  const tape = new Tape(engine);
  const x = leaf(engine, f32(new Rng(6).uniform(1000)), "x");
  const loss = sum(tape, add(tape, gelu(tape, x), scale(tape, x, 2)));
  await engine.run([...tape.forward(), ...tape.backward(loss)]);
  assert.ok(engine.pool.bytesInUse > startPool);
  tape.dispose();
  x.dispose();
  assert.equal(engine.pool.bytesInUse, startPool);
  assert.equal(engine.bytesInUse, startEngine);
});

gpuTest("using disposed tensors or a disposed tape's commands is an error", async (engine) => {
  const tape = new Tape(engine);
  const x = leaf(engine, [1, 2, 3], "x");
  const y = gelu(tape, gelu(tape, x));
  const forward = tape.forward();
  const dy = leaf(engine, [1, 1, 1], "dy", false);
  const backward = tape.backward(y, dy);
  await engine.run([...forward, ...backward]);
  tape.dispose();
  // The buffers may already serve other tensors: replaying would corrupt them silently.
  await assert.rejects(
    engine.run(forward, "stale forward"),
    /stale forward.*"gelu".*after dispose/,
  );
  // The backward reads gelu(x), which the tape owned.
  await assert.rejects(
    engine.run(backward),
    /"gelu backward" uses tensor "gelu\(x\)" after dispose/,
  );
  assert.deepEqual(tape.forward(), []);
  x.dispose();
  assert.throws(() => gelu(new Tape(engine), x), /"x" used after dispose/);
  assert.throws(() => engine.write(x, [1, 2, 3]), /after dispose/);
  await assert.rejects(engine.readF32(x), /after dispose/);
  dy.dispose();
});

/** Builds and runs a small graph from a seed; returns the bits of the loss and gradients. */
async function lossAndGrads(engine: Engine, seed: number): Promise<Uint32Array[]> {
  const rng = new Rng(seed);
  const tape = new Tape(engine);
  const x = leaf(engine, f32(rng.normal(1000)), "x");
  const w = leaf(engine, f32(rng.normal(1000)), "w");
  const loss = sum(tape, add(tape, gelu(tape, add(tape, x, w)), scale(tape, gelu(tape, w), 0.1)));
  await engine.run([...tape.forward(), ...tape.backward(loss)]);
  const results = [
    await engine.readF32(loss),
    await engine.readF32(x.grad!),
    await engine.readF32(w.grad!),
  ];
  tape.dispose();
  x.dispose();
  w.dispose();
  return results.map((r) => new Uint32Array(r.buffer));
}

gpuTest("the same seed gives the same bits on every run", async (engine) => {
  const first = await lossAndGrads(engine, 7);
  assert.deepEqual(await lossAndGrads(engine, 7), first);
  assert.notDeepEqual(await lossAndGrads(engine, 8), first);
});
