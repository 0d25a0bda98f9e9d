import assert from "node:assert/strict";
import type { Engine } from "../../engine/device.ts";
import { AdamW } from "../../model/optim.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { adamwCommands, type AdamWHyper, adamwUniformValues } from "../../kernels/adamw.ts";
import { bindingChunks } from "../../kernels/chunks.ts";
import { type AdamWStateRef, adamwStepRef } from "../ref/adamw.ts";
import { assertClose, f32, gpuTest, Rng } from "../util.ts";

// Each step rounds p, m and v to f32 (relative 6e-8) and the update m̂/(√v̂ + eps) carries a few
// ulps from sqrt and division (WGSL allows 2.5 ulp); over ten steps that stays below ~1e-6·|p|.
// |p| ≈ 1 and updates ≈ lr = 1e-2, so a wrong bias correction, decay or β shows as ≥ 1e-4.
const P_TOL = { atol: 1e-6, rtol: 2e-6 };
// m is a sum of gradient terms (|g| ≈ 1) that can cancel: absolute error ~1e-7 of their scale.
const M_TOL = { atol: 1e-6, rtol: 1e-5 };
// v is a sum of positive terms: relative error only; it is exactly 0 where every g was 0.
const V_TOL = { atol: 1e-12, rtol: 1e-5 };

const BETAS = [0.9, 0.95] as const;
const EPS = 1e-8;

/** A learning rate that changes every step (cosine decay), as training schedules do. */
function lrAt(t: number): number {
  return 1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + Math.cos(Math.PI * t / 10));
}

function hyper(lr: number, weightDecay: number): AdamWHyper {
  return { lr, beta1: BETAS[0], beta2: BETAS[1], eps: EPS, weightDecay };
}

function parameter(engine: Engine, values: ArrayLike<number>, shape: number[], label: string) {
  const p = engine.tensor(shape, { data: values, label });
  p.requiresGrad = true;
  return p;
}

/** Steps GPU and float64 reference side by side with fresh gradients each step. */
async function trainBoth(
  engine: Engine,
  opt: AdamW,
  refs: AdamWStateRef[],
  decays: number[],
  steps: number,
  rng: Rng,
  gradient: (n: number) => Float64Array = (n) => f32(rng.normal(n)),
): Promise<void> {
  for (let t = 1; t <= steps; t++) {
    const lr = lrAt(t);
    opt.params.forEach((p, i) => {
      const g = gradient(p.size);
      engine.write(p.grad!, g);
      adamwStepRef(refs[i], g, t, hyper(lr, decays[i]));
    });
    await engine.run(opt.step(lr), `adamw step ${t}`);
  }
}

async function assertMatches(engine: Engine, opt: AdamW, refs: AdamWStateRef[], what: string) {
  const state = await opt.exportState();
  for (const [i, p] of opt.params.entries()) {
    assertClose(await engine.readF32(p), refs[i].p, P_TOL, `${what} ${p.label} p`);
    assertClose(state.m[i], refs[i].m, M_TOL, `${what} ${p.label} m`);
    assertClose(state.v[i], refs[i].v, V_TOL, `${what} ${p.label} v`);
  }
}

function refState(p0: Float64Array): AdamWStateRef {
  return { p: p0.slice(), m: new Float64Array(p0.length), v: new Float64Array(p0.length) };
}

function bits(values: Float32Array): Uint32Array {
  return new Uint32Array(values.buffer, values.byteOffset, values.length);
}

function disposeAll(opt: AdamW, params: Tensor[]): void {
  opt.dispose();
  for (const p of params) p.dispose();
}

Deno.test("adamw reference: a constant gradient moves p by lr·g/(|g|+eps) every step", () => {
  // With g constant, m_t = (1−β1^t)·g and v_t = (1−β2^t)·g², so the bias-corrected update is
  // the same each step: this pins the bias corrections independently of the formula's layout.
  const g = [0.5, -2, 1e-3];
  const state = refState(Float64Array.from([1, 2, -3]));
  for (let t = 1; t <= 5; t++) adamwStepRef(state, g, t, hyper(0.1, 0));
  const expected = [1, 2, -3].map((p0, i) => p0 - 5 * 0.1 * g[i] / (Math.abs(g[i]) + EPS));
  assertClose(state.p, expected, { atol: 1e-12, rtol: 1e-12 }, "constant-gradient steps");
  // A zero gradient leaves only the decoupled decay: p·(1 − lr·wd) per step.
  const decayed = refState(Float64Array.from([1, -2]));
  for (let t = 1; t <= 3; t++) adamwStepRef(decayed, [0, 0], t, hyper(0.1, 0.5));
  assertClose(decayed.p, [0.95 ** 3, -2 * 0.95 ** 3], { atol: 0, rtol: 1e-15 }, "pure decay");
});

for (const n of [1, 3, 17, 65, 127, 64, 1000]) {
  gpuTest(`adamw matches the float64 reference over 10 steps (n=${n})`, async (engine) => {
    const rng = new Rng(n);
    const p0s = [f32(rng.uniform(n)), f32(rng.uniform(n))];
    const decays = [0.1, 0];
    const params = p0s.map((p0, i) => parameter(engine, p0, [n], `w${i}`));
    // Two groups: decayed (wd 0.1, large so that decay is visible) and not decayed.
    const opt = new AdamW(engine, [
      { params: [params[0]], weightDecay: decays[0] },
      { params: [params[1]], weightDecay: decays[1] },
    ], { betas: BETAS, eps: EPS });
    const refs = p0s.map(refState);
    await trainBoth(engine, opt, refs, decays, 10, rng);
    await assertMatches(engine, opt, refs, `n=${n}`);
    disposeAll(opt, params);
  });
}

gpuTest(
  "adamw at GPT-2's 768×3072 MLP weight matches the reference over 5 steps",
  async (engine) => {
    const rng = new Rng(5);
    const p0 = f32(rng.normal(768 * 3072, 0.02));
    const w = parameter(engine, p0, [768, 3072], "c_fc.weight");
    const opt = new AdamW(engine, [w], { betas: BETAS, eps: EPS, weightDecay: 0.01 });
    const refs = [refState(p0)];
    await trainBoth(engine, opt, refs, [0.01], 5, rng, (n) => f32(rng.normal(n, 1e-2)));
    await assertMatches(engine, opt, refs, "768×3072");
    disposeAll(opt, [w]);
  },
);

gpuTest("adamw decay filter exempts biases and norms from weight decay", async (engine) => {
  const rng = new Rng(11);
  const p0s = [f32(rng.uniform(8 * 12)), f32(rng.uniform(12))];
  const [weight, bias] = [
    parameter(engine, p0s[0], [8, 12], "w"),
    parameter(engine, p0s[1], [12], "b"),
  ];
  const opt = new AdamW(engine, [weight, bias], {
    betas: BETAS,
    eps: EPS,
    weightDecay: 0.1,
    decay: (p) => p.shape.length >= 2,
  });
  const refs = p0s.map(refState);
  await trainBoth(engine, opt, refs, [0.1, 0], 4, rng);
  await assertMatches(engine, opt, refs, "decay filter");
  disposeAll(opt, [weight, bias]);
});

gpuTest("adamw chunks for GPT-2's wte (50257×768) are aligned and cover it", (engine) => {
  // wte is 154 MB, over maxStorageBufferBindingSize (128 MiB here). Running a step on it takes
  // ~15 s on this adapter (first touch of 4 × 154 MB), so the chunk plan is checked here and the
  // chunked kernel itself on a small tensor with a small limit below.
  const n = 50257 * 768;
  const { maxStorageBufferBindingSize, minStorageBufferOffsetAlignment } = engine.limits;
  const chunks = bindingChunks(engine, n);
  assert.equal(chunks.length, Math.ceil(n * 4 / maxStorageBufferBindingSize));
  let next = 0;
  for (const { start, count } of chunks) {
    assert.equal(start, next);
    assert.equal((start * 4) % minStorageBufferOffsetAlignment, 0);
    assert.ok(count * 4 <= maxStorageBufferBindingSize && count % 4 === 0);
    next += count;
  }
  assert.equal(next, n);
  return Promise.resolve();
});

for (const n of [1000, 1001]) {
  gpuTest(`adamw splits a tensor larger than a binding into chunks (n=${n})`, async (engine) => {
    // The real limit is 128 MiB (GPT-2's wte exceeds it); a 256-byte "limit" exercises the
    // same chunking on a small tensor: 64-element vec4 chunks and a ragged last chunk.
    const rng = new Rng(n);
    const p0 = f32(rng.uniform(n));
    const p = parameter(engine, p0, [n], "p");
    const [g, m, v] = ["g", "m", "v"].map((label) => engine.tensor([n], { label }));
    const uniform = engine.uniform(32, "adamw test");
    const commands = adamwCommands(engine, { p, g, m, v }, uniform, 256);
    assert.equal(commands.length, Math.ceil(n / 64));
    const ref = refState(p0);
    for (let t = 1; t <= 3; t++) {
      const grad = f32(rng.normal(n));
      engine.write(g, grad);
      uniform.write(adamwUniformValues(hyper(lrAt(t), 0.1), t));
      adamwStepRef(ref, grad, t, hyper(lrAt(t), 0.1));
      await engine.run(commands);
    }
    assertClose(await engine.readF32(p), ref.p, P_TOL, "chunked p");
    assertClose(await engine.readF32(m), ref.m, M_TOL, "chunked m");
    assertClose(await engine.readF32(v), ref.v, V_TOL, "chunked v");
    engine.releaseUniform(uniform);
    for (const t of [p, g, m, v]) t.dispose();
  });
}

gpuTest("adamw with a zero gradient only decays p and keeps m, v at zero", async (engine) => {
  const rng = new Rng(3);
  const p0s = [f32(rng.uniform(67)), f32(rng.uniform(68))];
  const params = p0s.map((p0, i) => parameter(engine, p0, [p0.length], `w${i}`));
  const opt = new AdamW(engine, [
    { params: [params[0]], weightDecay: 0.1 },
    { params: [params[1]], weightDecay: 0 },
  ]);
  const refs = p0s.map(refState);
  await trainBoth(engine, opt, refs, [0.1, 0], 3, rng, (n) => new Float64Array(n));
  await assertMatches(engine, opt, refs, "zero gradient");
  // Without decay nothing may change at all: 0/(0 + eps) is exactly 0.
  assert.deepEqual(bits(await engine.readF32(params[1])), bits(Float32Array.from(p0s[1])));
  const state = await opt.exportState();
  for (const moment of [...state.m, ...state.v]) {
    assert.ok(moment.every((x) => x === 0));
  }
  disposeAll(opt, params);
});

/** Five steps from fixed seeds; optionally checkpointed and restored into a new optimiser. */
async function fiveSteps(engine: Engine, restartAfter?: number): Promise<Float32Array> {
  const rng = new Rng(42);
  const p = parameter(engine, f32(rng.uniform(300)), [300], "p");
  let opt = new AdamW(engine, [p], { lr: 1e-2 });
  for (let t = 1; t <= 5; t++) {
    engine.write(p.grad!, f32(rng.normal(300)));
    await engine.run(opt.step(lrAt(t)));
    if (t === restartAfter) {
      const state = await opt.exportState();
      opt.dispose();
      opt = new AdamW(engine, [p], { lr: 1e-2 });
      opt.importState(state);
      assert.equal(opt.stepCount, t);
    }
  }
  const result = await engine.readF32(p);
  disposeAll(opt, [p]);
  return result;
}

gpuTest("adamw is deterministic and a state export/import resumes bit-exactly", async (engine) => {
  const first = bits(await fiveSteps(engine));
  assert.deepEqual(bits(await fiveSteps(engine)), first);
  assert.deepEqual(bits(await fiveSteps(engine, 3)), first);
});

gpuTest("adamw replays one command list and frees what it holds", async (engine) => {
  const startInUse = engine.pool.bytesInUse;
  const startAll = engine.bytesInUse;
  const ps = [parameter(engine, [1, 2, 3], [3], "a"), parameter(engine, [4, 5], [2], "b")];
  const beforeOpt = engine.bytesInUse;
  const opt = new AdamW(engine, [
    { params: [ps[0]], weightDecay: 0.01 },
    { params: [ps[1]], weightDecay: 0 },
  ]);
  // m and v for both (the pool rounds each buffer to 256 bytes), the gradients the optimiser
  // creates, and one 32-byte uniform per distinct weight decay.
  assert.equal(engine.bytesInUse - beforeOpt, 6 * 256 + 2 * 32);
  assert.equal(opt.byteLength, 2 * (3 + 2) * 4 + 2 * 32);
  assert.equal(opt.step(), opt.step());
  assert.equal(opt.step().length, 2);
  assert.equal(opt.stepCount, 3);
  opt.dispose();
  assert.throws(() => opt.step(), /after dispose/);
  for (const p of ps) p.dispose();
  assert.equal(engine.pool.bytesInUse, startInUse);
  assert.equal(engine.bytesInUse, startAll);
  await engine.sync();
});

gpuTest("adamw refuses frozen, duplicated and disposed parameters", async (engine) => {
  const frozen = engine.tensor([4], { label: "frozen" });
  assert.throws(() => new AdamW(engine, [frozen]), /does not require grad/);
  const p = parameter(engine, [1, 2], [2], "p");
  assert.throws(() => new AdamW(engine, [p, p]), /listed twice/);
  const opt = new AdamW(engine, [p]);
  p.grad!.dispose();
  p.grad = undefined;
  assert.throws(() => opt.step(), /disposed or replaced/);
  assert.throws(() => opt.importState({ step: 1, m: [], v: [] }), /disposed or replaced/);
  opt.dispose();
  p.dispose();
  frozen.dispose();
  await engine.sync();
});
