import { add } from "../../kernels/add.ts";
import { attention } from "../../kernels/attention.ts";
import type { Engine } from "../../engine/device.ts";
import type { KernelVariant } from "../../kernels/variant.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { attentionBackwardRef, attentionRef, type AttentionShape } from "../ref/attention.ts";
import { addRef } from "../ref/add.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, leaf, Rng } from "../util.ts";

// out is a convex combination of v rows (|v| ≲ 4): f32 rounding of the hs-term scores, exp and
// the running sums gives ≤ 1e-6 (measured 6e-7 at T=1024); 5× headroom.
const OUT_TOL = { atol: 5e-6, rtol: 1e-5 };
/** dq, dk, dv are f32 sums of up to T terms: measured ≤ 1e-5 at T=1024 (3.4e-6 at T=128). */
function gradTol(T: number) {
  return { atol: 1e-5 + 3e-8 * T, rtol: 1e-5 };
}

Deno.test("attention reference gradient matches finite differences", () => {
  const s = { B: 2, T: 5, C: 6, nHead: 2 };
  const rng = new Rng(3);
  const qkv = rng.normal(s.B * s.T * 3 * s.C, 1.5);
  const dout = rng.uniform(s.B * s.T * s.C);
  assertGradMatchesFD(
    (v) => dot(attentionRef(v, s), dout),
    qkv,
    attentionBackwardRef(qkv, dout, s),
    "attention dqkv",
    { count: qkv.length },
  );
});

/** Random qkv and upstream gradient, rounded to f32; `spread` scales q and k (peakier softmax). */
function inputs(s: AttentionShape, seed: number, spread = 1) {
  const rng = new Rng(seed);
  return {
    qkv: f32(rng.normal(s.B * s.T * 3 * s.C, spread)),
    dout: f32(rng.normal(s.B * s.T * s.C)),
  };
}

/** Forward and accumulated backward of one shape against the float64 reference. */
async function checkShape(
  engine: Engine,
  s: AttentionShape,
  opts: { spread?: number; variant?: KernelVariant } = {},
) {
  const data = inputs(s, s.B * 7919 + s.T * 31 + s.C, opts.spread);
  const shape = [s.B, s.T, 3 * s.C];
  const before = f32(new Rng(5).uniform(data.qkv.length));
  const qkv = leaf(engine, shape, data.qkv, "qkv");
  qkv.grad = engine.tensor(shape, { data: before });
  const dout = engine.tensor([s.B, s.T, s.C], { data: data.dout, label: "dout" });
  const tape = new Tape(engine);
  const out = attention(tape, qkv, s.nHead, { variant: opts.variant });
  await engine.run(tape.forward());
  assertClose(await engine.readF32(out), attentionRef(data.qkv, s), OUT_TOL, "attention out");
  await engine.run(tape.backward(out, dout));
  assertClose(
    await engine.readF32(qkv.grad),
    addRef(before, attentionBackwardRef(data.qkv, data.dout, s)),
    gradTol(s.T),
    "attention dqkv (accumulated)",
  );
  tape.dispose();
  qkv.dispose();
  dout.dispose();
}

const awkward: AttentionShape[] = [
  { B: 1, T: 1, C: 12, nHead: 4 }, // hs = 3
  { B: 2, T: 3, C: 12, nHead: 4 },
  { B: 1, T: 17, C: 20, nHead: 4 }, // hs = 5
  { B: 2, T: 17, C: 4, nHead: 4 }, // hs = 1
  { B: 2, T: 65, C: 24, nHead: 2 }, // hs = 12
  { B: 1, T: 127, C: 21, nHead: 3 }, // hs = 7
  { B: 2, T: 127, C: 32, nHead: 1 }, // one head of 32
];
for (const s of awkward) {
  gpuTest(
    `attention matches float64, gradients accumulate (${JSON.stringify(s)})`,
    (engine) => checkShape(engine, s),
  );
}

gpuTest(
  "attention with peaked softmax (scores of std ~9) matches float64",
  (engine) => checkShape(engine, { B: 2, T: 65, C: 32, nHead: 2 }, { spread: 3 }),
);

gpuTest(
  "attention at the reference config (B=8, T=128, C=256, 4 heads)",
  (engine) => checkShape(engine, { B: 8, T: 128, C: 256, nHead: 4 }),
);

// Full GPT-2 size for one sequence: the float64 reference alone takes ~5 s here.
gpuTest(
  "attention at GPT-2 size (B=1, T=1024, C=768, 12 heads)",
  (engine) => checkShape(engine, { B: 1, T: 1024, C: 768, nHead: 12 }),
);

// 17·1024 packed rows exceed the 16384-row texture limit: rows fold into a second stack.
gpuTest(
  "attention with more rows than a texture is tall (B=17, T=1024, hs=3)",
  (engine) => checkShape(engine, { B: 17, T: 1024, C: 12, nHead: 4 }),
);

for (const s of [{ B: 2, T: 17, C: 12, nHead: 4 }, { B: 2, T: 130, C: 64, nHead: 2 }]) {
  gpuTest(
    `attention storage-buffer variant matches float64 (${JSON.stringify(s)})`,
    (engine) => checkShape(engine, s, { variant: "storage" }),
  );
}

gpuTest("attention overwrites the gradient of an intermediate qkv", async (engine) => {
  // qkv is an add's output consumed only by attention, so the tape asks for an overwrite.
  // Running the backward pass twice must not double it: the leaf behind the add gets exactly 2×.
  const s = { B: 2, T: 33, C: 24, nHead: 3 };
  const data = inputs(s, 17);
  const shape = [s.B, s.T, 3 * s.C];
  const qkv0 = leaf(engine, shape, data.qkv, "qkv0");
  const zeros = engine.tensor(shape, { label: "zeros" });
  const dout = engine.tensor([s.B, s.T, s.C], { data: data.dout, label: "dout" });
  const tape = new Tape(engine);
  const out = attention(tape, add(tape, qkv0, zeros), s.nHead);
  await engine.run(tape.forward());
  const backward = tape.backward(out, dout);
  await engine.run(backward);
  await engine.run(backward);
  const twice = attentionBackwardRef(data.qkv, data.dout, s).map((g) => 2 * g);
  assertClose(await engine.readF32(qkv0.grad!), twice, gradTol(s.T), "dqkv (overwritten twice)");
  tape.dispose();
  for (const t of [qkv0, zeros, dout]) t.dispose();
});

gpuTest("attention is causal: a token's q, k, v change nothing before it", async (engine) => {
  const s = { B: 2, T: 70, C: 32, nHead: 4 };
  const data = inputs(s, 23);
  const qkv = engine.tensor([s.B, s.T, 3 * s.C], { data: data.qkv, label: "qkv" });
  const tape = new Tape(engine);
  const out = attention(tape, qkv, s.nHead);
  await engine.run(tape.forward());
  const original = await engine.readF32(out);
  // Tokens inside and at the edges of the kernels' row tiles (4 or 8 rows per invocation).
  for (const future of [1, 8, 41, 69]) {
    // Perturb every value (query, key and value) of token `future` of sequence 1.
    const perturbed = Float64Array.from(data.qkv);
    const start = (s.T + future) * 3 * s.C;
    for (let i = start; i < start + 3 * s.C; i++) perturbed[i] += 1;
    engine.write(qkv, perturbed);
    await engine.run(tape.forward());
    const changed = await engine.readF32(out);
    const firstChanged = (s.T + future) * s.C;
    for (let i = 0; i < firstChanged; i++) {
      assertEquals(changed[i], original[i], `out element ${i} must not see token ${future}`);
    }
    assert(
      changed.slice(firstChanged).some((v, i) => v !== original[firstChanged + i]),
      `rows from token ${future} on must change`,
    );
  }
  tape.dispose();
  qkv.dispose();
});

gpuTest("attention backward is deterministic (same bits twice)", async (engine) => {
  const s = { B: 2, T: 200, C: 64, nHead: 2 };
  const data = inputs(s, 29);
  const shape = [s.B, s.T, 3 * s.C];
  const qkv = leaf(engine, shape, data.qkv, "qkv");
  const dout = engine.tensor([s.B, s.T, s.C], { data: data.dout, label: "dout" });
  const tape = new Tape(engine);
  const out = attention(tape, qkv, s.nHead);
  const step = [...tape.forward(), ...tape.backward(out, dout)];
  await engine.run(step);
  const first = await engine.readF32(qkv.grad!);
  await engine.run([{ kind: "clear", label: "zero dqkv", tensor: qkv.grad! }, ...step]);
  const second = await engine.readF32(qkv.grad!);
  assertEquals(new Uint32Array(second.buffer), new Uint32Array(first.buffer), "bits of dqkv");
  tape.dispose();
  qkv.dispose();
  dout.dispose();
});

gpuTest("attention rejects shapes it cannot split into heads", (engine) => {
  const tape = new Tape(engine);
  const tensors: Tensor[] = [engine.tensor([2, 3, 36]), engine.tensor([2, 3, 35])];
  assertThrows(() => attention(tape, tensors[0], 5), ShapeError, "not divisible by nHead=5");
  assertThrows(() => attention(tape, tensors[1], 1), ShapeError, "[B, T, 3C]");
  tape.dispose();
  for (const t of tensors) t.dispose();
  return Promise.resolve();
});
