import { add } from "../../kernels/add.ts";
import { attention, groupedAttention } from "../../kernels/attention.ts";
import type { Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { type KernelVariant, kernelVariant } from "../../kernels/variant.ts";
import {
  groupedAttentionBackwardRef,
  groupedAttentionRef,
  type GroupedAttentionShape,
} from "../ref/attention.ts";
import { addRef } from "../ref/add.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, leaf, Rng } from "../util.ts";

// As for GPT-2's attention (attention_test.ts): out is a convex combination of v rows, f32
// rounding of the D-term scores, exp and running sums; measured ≤ 7e-7.
const OUT_TOL = { atol: 5e-6, rtol: 1e-5 };
/**
 * dq sums T terms, as in attention_test.ts; dk and dv sum G·T (G query heads per KV head, one
 * after the other), so their rounding error grows with G·T: measured ≤ 8e-6 at SmolLM2's size
 * (T = 128, G = 3) and ≤ 1.1e-5 at T = 512, G = 8, against 2.2e-5 and 1.3e-4 allowed.
 */
function gradTol(s: GroupedAttentionShape) {
  return { atol: 1e-5 + 3e-8 * s.T * (s.heads / s.kvHeads), rtol: 1e-5 };
}

Deno.test("grouped attention reference gradients match finite differences", () => {
  const s = { B: 2, T: 5, heads: 6, kvHeads: 2, D: 3 };
  const rng = new Rng(3);
  const q = rng.normal(s.B * s.T * s.heads * s.D, 1.5);
  const k = rng.normal(s.B * s.T * s.kvHeads * s.D, 1.5);
  const v = rng.normal(k.length);
  const dout = rng.uniform(q.length);
  const grads = groupedAttentionBackwardRef(q, k, v, dout, s);
  const loss = (qv: Float64Array, kv: Float64Array, vv: Float64Array) =>
    dot(groupedAttentionRef(qv, kv, vv, s), dout);
  assertGradMatchesFD((x) => loss(x, k, v), q, grads.dq, "dq", { count: q.length });
  assertGradMatchesFD((x) => loss(q, x, v), k, grads.dk, "dk", { count: k.length });
  assertGradMatchesFD((x) => loss(q, k, x), v, grads.dv, "dv", { count: v.length });
});

interface Data {
  q: Float64Array;
  k: Float64Array;
  v: Float64Array;
  dout: Float64Array;
}

/** Random q, k, v and upstream gradient, rounded to f32. */
function inputs(s: GroupedAttentionShape, seed: number): Data {
  const rng = new Rng(seed);
  const rows = s.B * s.T;
  return {
    q: f32(rng.normal(rows * s.heads * s.D)),
    k: f32(rng.normal(rows * s.kvHeads * s.D)),
    v: f32(rng.normal(rows * s.kvHeads * s.D)),
    dout: f32(rng.normal(rows * s.heads * s.D)),
  };
}

/** q, k, v as leaves on the GPU ([B, T, heads·D] each), and dout. */
function upload(engine: Engine, s: GroupedAttentionShape, data: Data) {
  const rows = [s.B, s.T];
  return {
    q: leaf(engine, [...rows, s.heads * s.D], data.q, "q"),
    k: leaf(engine, [...rows, s.kvHeads * s.D], data.k, "k"),
    v: leaf(engine, [...rows, s.kvHeads * s.D], data.v, "v"),
    dout: engine.tensor([...rows, s.heads * s.D], { data: data.dout, label: "dout" }),
  };
}

/** Forward and accumulated backward of one shape against the float64 reference. */
async function checkShape(engine: Engine, s: GroupedAttentionShape, variant: KernelVariant) {
  const data = inputs(s, s.B * 7919 + s.T * 31 + s.heads * 7 + s.kvHeads + s.D);
  const { q, k, v, dout } = upload(engine, s, data);
  const rng = new Rng(5);
  const before = [q, k, v].map((t) => f32(rng.uniform(t.size)));
  [q, k, v].forEach((t, i) => t.grad = engine.tensor(t.shape, { data: before[i] }));
  const tape = new Tape(engine);
  const out = groupedAttention(tape, q, k, v, s.heads, s.kvHeads, { variant });
  await engine.run(tape.forward());
  const ref = groupedAttentionRef(data.q, data.k, data.v, s);
  assertClose(await engine.readF32(out), ref, OUT_TOL, "out");
  await engine.run(tape.backward(out, dout));
  const grads = groupedAttentionBackwardRef(data.q, data.k, data.v, data.dout, s);
  const expected = [grads.dq, grads.dk, grads.dv];
  for (const [i, name] of ["dq", "dk", "dv"].entries()) {
    const got = await engine.readF32([q, k, v][i].grad!);
    assertClose(got, addRef(before[i], expected[i]), gradTol(s), `${name} (accumulated)`);
  }
  tape.dispose();
  for (const t of [q, k, v, dout]) t.dispose();
}

const shapes: GroupedAttentionShape[] = [
  { B: 1, T: 1, heads: 1, kvHeads: 1, D: 3 },
  { B: 2, T: 3, heads: 2, kvHeads: 1, D: 4 }, // multi-query: one KV head for all
  { B: 2, T: 17, heads: 3, kvHeads: 1, D: 5 },
  { B: 2, T: 33, heads: 6, kvHeads: 2, D: 8 },
  { B: 1, T: 65, heads: 9, kvHeads: 3, D: 7 },
  { B: 3, T: 127, heads: 9, kvHeads: 3, D: 12 },
  { B: 2, T: 20, heads: 4, kvHeads: 4, D: 6 }, // multi-head: KV = H
  { B: 1, T: 300, heads: 6, kvHeads: 2, D: 16 }, // T > 256: the larger row tiles
];
for (const s of shapes) {
  for (const variant of ["texture", "storage"] as const) {
    gpuTest(
      `grouped attention ${variant} matches float64, gradients accumulate (${JSON.stringify(s)})`,
      (engine) => checkShape(engine, s, variant),
    );
  }
}

// SmolLM2-135M's attention at batch 8, sequence 128, in the engine's variant (COMIGS_VARIANT).
gpuTest(
  "grouped attention at SmolLM2-135M size (B=8, T=128, 9 heads, 3 KV heads of 64)",
  (engine) =>
    checkShape(engine, { B: 8, T: 128, heads: 9, kvHeads: 3, D: 64 }, kernelVariant(engine)),
);

gpuTest("grouped attention with KV = H is GPT-2's attention, bit for bit", async (engine) => {
  const s = { B: 2, T: 37, heads: 3, kvHeads: 3, D: 12 };
  const data = inputs(s, 41);
  const C = s.heads * s.D;
  // The same operands packed GPT-2's way: [q | k | v] per row.
  const qkvData = new Float64Array(s.B * s.T * 3 * C);
  for (let row = 0; row < s.B * s.T; row++) {
    for (const [p, part] of [data.q, data.k, data.v].entries()) {
      qkvData.set(part.subarray(row * C, (row + 1) * C), row * 3 * C + p * C);
    }
  }
  const { q, k, v, dout } = upload(engine, s, data);
  const qkv = leaf(engine, [s.B, s.T, 3 * C], qkvData, "qkv");
  const tape = new Tape(engine);
  const grouped = groupedAttention(tape, q, k, v, s.heads, s.kvHeads);
  const packed = attention(tape, qkv, s.heads);
  await engine.run([
    ...tape.forward(),
    ...tape.backward(grouped, dout),
    ...tape.backward(packed, dout),
  ]);
  const bits = async (t: Tensor) => new Uint32Array((await engine.readF32(t)).buffer);
  assertEquals(await bits(grouped), await bits(packed), "out");
  const dqkv = await bits(qkv.grad!);
  for (const [p, t] of [q, k, v].entries()) {
    const got = await bits(t.grad!);
    for (let row = 0; row < s.B * s.T; row++) {
      assertEquals(
        got.subarray(row * C, (row + 1) * C),
        dqkv.subarray(row * 3 * C + p * C, row * 3 * C + (p + 1) * C),
        `gradient of ${t.label}, row ${row}`,
      );
    }
  }
  tape.dispose();
  for (const t of [q, k, v, dout, qkv]) t.dispose();
});

gpuTest("grouped attention computes only the gradients asked for", async (engine) => {
  const s = { B: 2, T: 29, heads: 6, kvHeads: 2, D: 8 };
  const data = inputs(s, 43);
  const grads = groupedAttentionBackwardRef(data.q, data.k, data.v, data.dout, s);
  const expected = { q: grads.dq, k: grads.dk, v: grads.dv };
  // Each subset of the inputs requiring gradients (LoRA on some projections only).
  for (const wanted of [["q"], ["k"], ["v"], ["k", "v"], ["q", "v"]]) {
    const tensors = upload(engine, s, data);
    const inputs = { q: tensors.q, k: tensors.k, v: tensors.v };
    for (const [name, t] of Object.entries(inputs)) t.requiresGrad = wanted.includes(name);
    const tape = new Tape(engine);
    const out = groupedAttention(tape, inputs.q, inputs.k, inputs.v, s.heads, s.kvHeads);
    await engine.run(tape.forward());
    const backward = tape.backward(out, tensors.dout);
    // Packing dO, then the query kernel for q and one key/value kernel for k and/or v.
    const kernels = 1 + (wanted.includes("q") ? 1 : 0) + (wanted.some((n) => n !== "q") ? 1 : 0);
    assertEquals(backward.length, kernels, `commands for ${wanted}`);
    await engine.run(backward);
    for (const [name, t] of Object.entries(inputs)) {
      if (!wanted.includes(name)) {
        assertEquals(t.grad, undefined, `${name}.grad with ${wanted} wanted`);
        continue;
      }
      const ref = expected[name as keyof typeof expected];
      assertClose(await engine.readF32(t.grad!), ref, gradTol(s), `d${name} with ${wanted}`);
    }
    tape.dispose();
    for (const t of Object.values(tensors)) t.dispose();
  }
});

gpuTest("grouped attention overwrites the gradients of intermediate inputs", async (engine) => {
  // q, k, v are each an add's output consumed only by the attention, so the tape asks for
  // overwrites: two backward runs give the leaves behind the adds exactly twice the gradient.
  const s = { B: 2, T: 33, heads: 9, kvHeads: 3, D: 5 };
  const data = inputs(s, 17);
  const { q, k, v, dout } = upload(engine, s, data);
  const zeros = [q, k, v].map((t) => engine.tensor(t.shape));
  const tape = new Tape(engine);
  const [q1, k1, v1] = [q, k, v].map((t, i) => add(tape, t, zeros[i]));
  const out = groupedAttention(tape, q1, k1, v1, s.heads, s.kvHeads);
  await engine.run(tape.forward());
  const backward = tape.backward(out, dout);
  await engine.run(backward);
  await engine.run(backward);
  const grads = groupedAttentionBackwardRef(data.q, data.k, data.v, data.dout, s);
  const expected = [grads.dq, grads.dk, grads.dv];
  for (const [i, t] of [q, k, v].entries()) {
    const twice = expected[i].map((g) => 2 * g);
    assertClose(await engine.readF32(t.grad!), twice, gradTol(s), `d${t.label} (twice)`);
  }
  tape.dispose();
  for (const t of [q, k, v, dout, ...zeros]) t.dispose();
});

gpuTest("grouped attention is causal: a token's q, k, v change nothing before it", async (e) => {
  const s = { B: 2, T: 70, heads: 6, kvHeads: 2, D: 8 };
  const data = inputs(s, 23);
  const { q, k, v, dout } = upload(e, s, data);
  const tape = new Tape(e);
  const out = groupedAttention(tape, q, k, v, s.heads, s.kvHeads);
  await e.run(tape.forward());
  const original = await e.readF32(out);
  const C = s.heads * s.D, KVC = s.kvHeads * s.D;
  for (const future of [1, 8, 41, 69]) {
    // Perturb token `future` of sequence 1 in q, k and v.
    const row = s.T + future;
    const bump = (values: Float64Array, width: number) =>
      values.map((x, i) => i >= row * width && i < (row + 1) * width ? x + 1 : x);
    e.write(q, bump(data.q, C));
    e.write(k, bump(data.k, KVC));
    e.write(v, bump(data.v, KVC));
    await e.run(tape.forward());
    const changed = await e.readF32(out);
    for (let i = 0; i < row * C; i++) {
      assertEquals(changed[i], original[i], `out element ${i} must not see token ${future}`);
    }
    assert(
      changed.slice(row * C).some((x, i) => x !== original[row * C + i]),
      `rows from token ${future} on must change`,
    );
  }
  tape.dispose();
  for (const t of [q, k, v, dout]) t.dispose();
});

gpuTest("grouped attention backward is deterministic (same bits twice)", async (engine) => {
  const s = { B: 2, T: 200, heads: 9, kvHeads: 3, D: 16 };
  const { q, k, v, dout } = upload(engine, s, inputs(s, 29));
  const tape = new Tape(engine);
  const out = groupedAttention(tape, q, k, v, s.heads, s.kvHeads);
  const step = [...tape.forward(), ...tape.backward(out, dout)];
  const read = async () =>
    await Promise.all(
      [q, k, v].map(async (t) => new Uint32Array((await engine.readF32(t.grad!)).buffer)),
    );
  await engine.run(step);
  const first = await read();
  const zero = [q, k, v].map((t) => ({ kind: "clear" as const, label: "zero", tensor: t.grad! }));
  await engine.run([...zero, ...step]);
  assertEquals(await read(), first, "bits of dq, dk, dv");
  tape.dispose();
  for (const t of [q, k, v, dout]) t.dispose();
});

gpuTest("grouped attention holds K and V once, not once per query head", (engine) => {
  // SmolLM2's grouping: 9 query heads read 3 KV heads. The forward pass holds the packed
  // [q | k | v] rows (texels of 16 bytes), out and lse; repeating K and V would hold 9 + 18.
  const s = { B: 2, T: 64, heads: 9, kvHeads: 3, D: 64 };
  const { q, k, v, dout } = upload(engine, s, inputs(s, 31));
  for (const variant of ["texture", "storage"] as const) {
    const held = engine.bytesInUse;
    const tape = new Tape(engine);
    groupedAttention(tape, q, k, v, s.heads, s.kvHeads, { variant });
    const rows = s.B * s.T;
    const packed = rows * (s.heads + 2 * s.kvHeads) * (s.D / 4) * 16;
    const pooled = (bytes: number) => Math.ceil(bytes / 256) * 256;
    const expected = pooled(packed) + pooled(rows * s.heads * s.D * 4) + pooled(rows * s.heads * 4);
    assertEquals(engine.bytesInUse - held, expected, `bytes held by the forward (${variant})`);
    tape.dispose();
  }
  for (const t of [q, k, v, dout]) t.dispose();
  return Promise.resolve();
});

gpuTest("grouped attention rejects shapes it cannot group, with what to fix", (engine) => {
  const tape = new Tape(engine);
  const q = engine.tensor([2, 3, 36]), k = engine.tensor([2, 3, 12]), v = engine.tensor([2, 3, 12]);
  // T = 43690 with 3 query heads per KV head: 3·(21845 + 1) query blocks for one key row.
  const long = engine.tensor([1, 43690, 9]), longK = engine.tensor([1, 43690, 3]);
  const longV = engine.tensor([1, 43690, 3]);
  const other = engine.tensor([2, 4, 12]);
  assertThrows(() => groupedAttention(tape, q, k, v, 6, 4), ShapeError, "dividing heads=6");
  assertThrows(() => groupedAttention(tape, q, k, v, 5, 1), ShapeError, "not divisible by heads");
  assertThrows(() => groupedAttention(tape, q, k, v, 6, 3), ShapeError, "must be [2, 3, 18]");
  assertThrows(() => groupedAttention(tape, q, other, v, 6, 2), ShapeError, "must be [2, 3, 12]");
  assertThrows(() => groupedAttention(tape, q, k, k, 6, 2), ShapeError, "share memory");
  assertThrows(
    () => groupedAttention(tape, long, longK, longV, 9, 3),
    ShapeError,
    "use a shorter T",
  );
  assertEquals(tape.forward().length, 0, "nothing recorded");
  tape.dispose();
  for (const t of [q, k, v, long, longK, longV, other]) t.dispose();
  return Promise.resolve();
});
