import type { Engine } from "../../engine/device.ts";
import type { KernelVariant } from "../../kernels/variant.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { matmul } from "../../kernels/matmul.ts";
import {
  dAEntryRef,
  dBEntryRef,
  matmulBackwardRef,
  matmulEntryRef,
  matmulRef,
  type MatmulShape,
  operandIndex,
} from "../ref/matmul.ts";
import { assertGradMatchesFD, dot, f32, gpuTest, probe, Rng } from "../util.ts";

// Tolerance. An output entry sums K products in f32 (fma: one rounding per step). Each rounding
// is at most u = 2⁻²⁴ times a partial sum, and every partial sum is at most S = Σ_k |a_k·b_k|
// (+ |bias| + |what was accumulated onto|). The errors have random signs, so they add up like
// u·√K·S (the worst case K·u·S never happens with random data); we allow 4× that. Measured
// errors are 10–100× below the bound, while a lost or doubled term (|a_k·b_k| ~ S/K ≫ u·√K·S for
// the K used here) or a wrong index breaks it by orders of magnitude.
const U = 2 ** -24;
const ERROR_FACTOR = 4;

interface Expected {
  /** Index into the GPU result. */
  index: number;
  value: number;
  /** S: Σ |terms| behind the entry. */
  scale: number;
}

function assertWithinBound(got: Float32Array, expected: Expected[], terms: number, what: string) {
  const tolerance = ERROR_FACTOR * U * Math.sqrt(Math.max(1, terms));
  let worst: Expected | null = null, worstExcess = 1;
  for (const e of expected) {
    const excess = Math.abs(got[e.index] - e.value) / (tolerance * e.scale + Number.MIN_VALUE);
    if (!(excess <= worstExcess)) {
      [worst, worstExcess] = [e, Number.isNaN(excess) ? Infinity : excess];
    }
  }
  if (worst) {
    throw new Error(
      `${what}: element ${worst.index} is ${got[worst.index]}, reference ${worst.value} ` +
        `(error ${worstExcess.toPrecision(3)}× the bound ${ERROR_FACTOR}·u·√${terms}·${
          worst.scale.toPrecision(4)
        })`,
    );
  }
}

function allEntries(value: Float64Array, scale: Float64Array): Expected[] {
  return Array.from(value, (v, index) => ({ index, value: v, scale: scale[index] }));
}

/** Uniform in [-1, 1), already f32 (so the reference sees what the GPU sees); fast for 10⁷+. */
function uniformF32(rng: Rng, n: number): Float32Array {
  const values = new Float32Array(n);
  for (let i = 0; i < n; i++) values[i] = 2 * rng.next() - 1;
  return values;
}

/** Adds what the gradient was accumulated onto. */
function onto(expected: Expected[], before: ArrayLike<number> | null): Expected[] {
  if (!before) return expected;
  return expected.map((e) => ({
    ...e,
    value: e.value + before[e.index],
    scale: e.scale + Math.abs(before[e.index]),
  }));
}

/**
 * How a test feeds each input: a leaf whose `.grad` already holds values (the tape accumulates
 * into leaves), an op output whose gradient the matmul assigns (overwrite), or a frozen tensor
 * (no gradient: none may be computed).
 */
type Feed = "accumulate" | "overwrite" | "frozen";

interface Case extends MatmulShape {
  bias: boolean;
  feed: { a: Feed; b: Feed; bias: Feed };
  maxBindingBytes?: number;
  /** Check this many sampled entries per result instead of all (large shapes). */
  samples?: number;
}

const shape = (s: Partial<MatmulShape> & Pick<MatmulShape, "M" | "K" | "N">): MatmulShape => ({
  batch: 1,
  transA: false,
  transB: false,
  bBatched: false,
  ...s,
});

const allFeed = (feed: Feed) => ({ a: feed, b: feed, bias: feed });

function caseName(c: Case, variant: KernelVariant): string {
  const t = `${c.transA ? "ᵀ" : ""}·${c.transB ? "ᵀ" : ""}`;
  const batch = c.batch > 1 ? ` batch ${c.batch}${c.bBatched ? "" : " shared b"}` : "";
  const feeds = `a ${c.feed.a}, b ${c.feed.b}${c.bias ? `, bias ${c.feed.bias}` : ""}`;
  const chunked = c.maxBindingBytes ? `, bindings ≤ ${c.maxBindingBytes} B` : "";
  return `matmul ${variant}: ${c.M}×${c.K}×${c.N} A${t}B${batch} (${feeds}${chunked})`;
}

async function checkCase(engine: Engine, c: Case, variant: KernelVariant): Promise<void> {
  const rng = new Rng(c.M * 7919 + c.K * 131 + c.N);
  const bCount = c.bBatched ? c.batch : 1;
  const hosts = {
    a: uniformF32(rng, c.batch * c.M * c.K),
    b: uniformF32(rng, bCount * c.K * c.N),
    bias: c.bias ? uniformF32(rng, c.N) : null,
  };
  const dCValues = uniformF32(rng, c.batch * c.M * c.N);
  const lead = c.batch > 1 ? [c.batch] : [];
  const shapes = {
    a: [...lead, ...(c.transA ? [c.K, c.M] : [c.M, c.K])],
    b: [...(c.bBatched ? lead : []), ...(c.transB ? [c.N, c.K] : [c.K, c.N])],
    bias: [c.N],
  };
  const tape = new Tape(engine);
  const owned: Tensor[] = [];
  const inputs = {} as Record<
    "a" | "b" | "bias",
    { tensor: Tensor; grad: () => Tensor; before: ArrayLike<number> | null }
  >;
  for (const name of ["a", "b", "bias"] as const) {
    const values = hosts[name];
    if (!values) continue;
    const leaf = engine.tensor(shapes[name], { data: values, label: name });
    owned.push(leaf);
    const feed = c.feed[name];
    if (feed === "overwrite") {
      leaf.requiresGrad = true;
      const p = probe(tape, leaf);
      inputs[name] = { tensor: p.y, grad: p.grad, before: null };
    } else {
      leaf.requiresGrad = feed === "accumulate";
      const before = feed === "accumulate" ? uniformF32(rng, values.length) : null;
      if (before) leaf.grad = engine.tensor(shapes[name], { data: before, label: `grad ${name}` });
      inputs[name] = { tensor: leaf, grad: () => leaf.grad!, before };
    }
  }
  try {
    const out = matmul(tape, inputs.a.tensor, inputs.b.tensor, {
      transA: c.transA,
      transB: c.transB,
      bias: inputs.bias?.tensor,
      variant,
      maxBindingBytes: c.maxBindingBytes,
    });
    await engine.run(tape.forward());
    const at = operandIndex(c);
    const pick = (n: number) => Math.floor(rng.next() * n);
    const samples = c.samples ?? 0;
    const sampled = (make: () => Expected) => Array.from({ length: samples }, make);

    const forward = samples
      ? sampled(() => {
        const [z, m, n] = [pick(c.batch), pick(c.M), pick(c.N)];
        return {
          index: (z * c.M + m) * c.N + n,
          ...matmulEntryRef(hosts.a, hosts.b, hosts.bias, c, z, m, n),
        };
      })
      : fullForward(hosts.a, hosts.b, hosts.bias, c);
    assertWithinBound(await engine.readF32(out), forward, c.K, "forward");

    const dC = engine.tensor(out.shape, { data: dCValues, label: "dC" });
    owned.push(dC);
    const backward = tape.backward(out, dC);
    for (const [name, label] of [["a", "dA"], ["b", "dB"], ["bias", "dbias"]] as const) {
      if (c.feed[name] === "frozen" && backward.some((command) => command.label.includes(label))) {
        throw new Error(`${label} was computed although ${name} is frozen`);
      }
    }
    await engine.run(backward);
    const full = samples ? null : matmulBackwardRef(hosts.a, hosts.b, dCValues, c);
    if (c.feed.a !== "frozen") {
      const dA = full ? allEntries(full.dA, full.dAScale) : sampled(() => {
        const [z, m, k] = [pick(c.batch), pick(c.M), pick(c.K)];
        return { index: at.a(z, m, k), ...dAEntryRef(hosts.b, dCValues, c, z, m, k) };
      });
      assertWithinBound(
        await engine.readF32(inputs.a.grad()),
        onto(dA, inputs.a.before),
        c.N,
        "dA",
      );
    }
    if (c.feed.b !== "frozen") {
      const dB = full ? allEntries(full.dB, full.dBScale) : sampled(() => {
        const [z, k, n] = [pick(bCount), pick(c.K), pick(c.N)];
        return { index: at.b(z, k, n), ...dBEntryRef(hosts.a, dCValues, c, z, k, n) };
      });
      const terms = c.M * (c.bBatched ? 1 : c.batch);
      assertWithinBound(
        await engine.readF32(inputs.b.grad()),
        onto(dB, inputs.b.before),
        terms,
        "dB",
      );
    }
    if (c.bias && c.feed.bias !== "frozen") {
      const dBias = full ? allEntries(full.dBias, full.dBiasScale) : dBiasEntries(dCValues, c.N);
      const got = await engine.readF32(inputs.bias.grad());
      assertWithinBound(got, onto(dBias, inputs.bias.before), c.batch * c.M, "dbias");
    }
  } finally {
    tape.dispose();
    for (const t of owned) t.dispose();
  }
}

function fullForward(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  bias: ArrayLike<number> | null,
  s: MatmulShape,
): Expected[] {
  const { value, scale } = matmulRef(a, b, bias, s);
  return allEntries(value, scale);
}

function dBiasEntries(dC: ArrayLike<number>, N: number): Expected[] {
  const value = new Float64Array(N), scale = new Float64Array(N);
  for (let i = 0; i < dC.length; i++) {
    value[i % N] += dC[i];
    scale[i % N] += Math.abs(dC[i]);
  }
  return allEntries(value, scale);
}

// ---- the float64 reference's backward against finite differences ----

for (
  const s of [
    shape({ M: 3, K: 4, N: 5 }),
    shape({ M: 3, K: 4, N: 2, transA: true, transB: true }),
    shape({ batch: 2, M: 3, K: 2, N: 4, transA: true }),
    shape({ batch: 2, M: 2, K: 3, N: 3, transB: true, bBatched: true }),
  ]
) {
  Deno.test(`matmul reference gradients match finite differences (${JSON.stringify(s)})`, () => {
    const rng = new Rng(s.M + 10 * s.K + 100 * s.N);
    const a = rng.uniform(s.batch * s.M * s.K);
    const b = rng.uniform((s.bBatched ? s.batch : 1) * s.K * s.N);
    const bias = rng.uniform(s.N);
    const dC = rng.uniform(s.batch * s.M * s.N);
    const grads = matmulBackwardRef(a, b, dC, s);
    const loss = (aa: Float64Array, bb: Float64Array, cc: Float64Array) =>
      dot(matmulRef(aa, bb, cc, s).value, dC);
    assertGradMatchesFD((x) => loss(x, b, bias), a, grads.dA, "dA");
    assertGradMatchesFD((x) => loss(a, x, bias), b, grads.dB, "dB");
    assertGradMatchesFD((x) => loss(a, b, x), bias, grads.dBias, "dbias");
  });
}

// ---- GPU against the reference ----

const awkward: Case[] = [
  { ...shape({ M: 1, K: 1, N: 1 }), bias: true, feed: allFeed("overwrite") },
  { ...shape({ M: 3, K: 17, N: 65 }), bias: true, feed: allFeed("accumulate") },
  { ...shape({ M: 17, K: 127, N: 3, transA: true }), bias: false, feed: allFeed("overwrite") },
  { ...shape({ M: 65, K: 3, N: 17, transB: true }), bias: true, feed: allFeed("accumulate") },
  {
    ...shape({ M: 127, K: 65, N: 127, transA: true, transB: true }),
    bias: true,
    feed: allFeed("overwrite"),
  },
  {
    ...shape({ M: 1, K: 65, N: 127 }),
    bias: false,
    feed: { a: "accumulate", b: "frozen", bias: "frozen" },
  },
  {
    ...shape({ M: 127, K: 1, N: 3, transB: true }),
    bias: true,
    feed: { a: "frozen", b: "overwrite", bias: "accumulate" },
  },
  // Batched A, shared B: folded into one tall product; dB sums over the batch.
  { ...shape({ batch: 3, M: 17, K: 65, N: 3 }), bias: true, feed: allFeed("accumulate") },
  {
    ...shape({ batch: 3, M: 65, K: 17, N: 3, transB: true }),
    bias: false,
    feed: allFeed("overwrite"),
  },
  // Transposed batched A with a shared B: a batch dimension in the grid and a reducing dB.
  {
    ...shape({ batch: 3, M: 3, K: 17, N: 65, transA: true }),
    bias: false,
    feed: allFeed("overwrite"),
  },
  {
    ...shape({ batch: 3, M: 17, K: 3, N: 17, transA: true, transB: true, bBatched: true }),
    bias: true,
    feed: allFeed("accumulate"),
  },
  {
    ...shape({ batch: 2, M: 65, K: 17, N: 127, bBatched: true }),
    bias: false,
    feed: allFeed("overwrite"),
  },
];

// Bindings limited to a few KiB: products split along M, N and K, and batches into groups
// (sizes chosen so that chunks stay aligned for 256-byte offset alignment too).
const chunked: Case[] = [
  {
    ...shape({ M: 300, K: 400, N: 200 }),
    bias: true,
    feed: allFeed("overwrite"),
    maxBindingBytes: 131072,
  },
  {
    ...shape({ M: 300, K: 400, N: 200, transA: true, transB: true }),
    bias: true,
    feed: allFeed("accumulate"),
    maxBindingBytes: 131072,
  },
  // Groups of 2 batch entries; the transposed A keeps dB a reduction across groups.
  {
    ...shape({ batch: 5, M: 16, K: 24, N: 8, transA: true }),
    bias: true,
    feed: allFeed("overwrite"),
    maxBindingBytes: 4096,
  },
  // One batch matrix is too big for a binding: each entry split on its own.
  {
    ...shape({ batch: 3, M: 40, K: 24, N: 8, transA: true, bBatched: true }),
    bias: false,
    feed: allFeed("accumulate"),
    maxBindingBytes: 2048,
  },
];

// Operands beyond the 16,384-texel texture side (cheap shapes): M, K and N split, batch groups.
const tall: Case[] = [
  { ...shape({ M: 20000, K: 3, N: 5 }), bias: true, feed: allFeed("overwrite") },
  { ...shape({ M: 3, K: 20000, N: 5 }), bias: false, feed: allFeed("accumulate") },
  { ...shape({ M: 2, K: 3, N: 70000 }), bias: true, feed: allFeed("overwrite") },
  {
    ...shape({ batch: 3, M: 6000, K: 3, N: 5, transA: true }),
    bias: false,
    feed: allFeed("accumulate"),
  },
];

for (const variant of ["texture", "storage"] as const) {
  for (const c of [...awkward, ...chunked, ...tall]) {
    gpuTest(caseName(c, variant), (engine) => checkCase(engine, c, variant));
  }
}

// GPT-2 124M sizes (B·T = 1024 rows, C = 768): the MLP's c_fc with its bias, activations as
// intermediates (overwrite) and weights as leaves (accumulate). The storage variant runs at
// ~2 GFLOP/s here, so it takes the 768-wide projection instead of the 3072-wide one.
const gpt2: [KernelVariant, Case][] = [
  ["texture", {
    ...shape({ M: 1024, K: 768, N: 3072 }),
    bias: true,
    feed: { a: "overwrite", b: "accumulate", bias: "accumulate" },
    samples: 400,
  }],
  ["storage", {
    ...shape({ M: 1024, K: 768, N: 768 }),
    bias: true,
    feed: { a: "overwrite", b: "accumulate", bias: "accumulate" },
    samples: 400,
  }],
  // The reference config's tied output layer: x [1024, 256] · wteᵀ, wte [8192, 256].
  ["texture", {
    ...shape({ M: 1024, K: 256, N: 8192, transB: true }),
    bias: false,
    feed: { a: "overwrite", b: "accumulate", bias: "frozen" },
    samples: 400,
  }],
];
for (const [variant, c] of gpt2) {
  gpuTest(caseName(c, variant), (engine) => checkCase(engine, c, variant));
}

// GPT-2's tied output layer at full vocabulary, over the real 128 MiB binding limit: wte
// [50257, 768] is 154 MB. dX reduces over K = 50257 (split for bindings and textures) and dWte is
// written in row chunks. 32 rows instead of 1024 keep the test to seconds (moving 154 MB around
// costs more than the products here).
gpuTest(
  "matmul texture: 32×768×50257 A·Bᵀ with wte over the binding limit (forward, dX, dWte)",
  (engine) =>
    checkCase(engine, {
      ...shape({ M: 32, K: 768, N: 50257, transB: true }),
      bias: false,
      feed: allFeed("overwrite"),
      samples: 200,
    }, "texture"),
);

gpuTest("matmul of a tensor with itself accumulates both gradients", async (engine) => {
  const s = shape({ M: 17, K: 65, N: 17, transB: true });
  const values = f32(new Rng(5).uniform(17 * 65));
  const dCValues = f32(new Rng(6).uniform(17 * 17));
  for (const variant of ["texture", "storage"] as const) {
    const tape = new Tape(engine);
    const x = engine.tensor([17, 65], { data: values, label: "x" });
    x.requiresGrad = true;
    const out = matmul(tape, x, x, { transB: true, variant });
    const dC = engine.tensor([17, 17], { data: dCValues });
    await engine.run([...tape.forward(), ...tape.backward(out, dC)]);
    const g = matmulBackwardRef(values, values, dCValues, s);
    const expected = allEntries(
      g.dA.map((v, i) => v + g.dB[i]),
      g.dAScale.map((v, i) => v + g.dBScale[i]),
    );
    assertWithinBound(await engine.readF32(x.grad!), expected, 17, `x·xᵀ ${variant}`);
    tape.dispose();
    x.dispose();
    dC.dispose();
  }
});

gpuTest("matmul gives the same bits on every run", async (engine) => {
  const rng = new Rng(9);
  const tape = new Tape(engine);
  const a = engine.tensor([65, 127], { data: f32(rng.uniform(65 * 127)) });
  const b = engine.tensor([127, 33], { data: f32(rng.uniform(127 * 33)) });
  const out = matmul(tape, a, b);
  await engine.run(tape.forward());
  const first = await engine.readF32(out);
  await engine.run(tape.forward());
  const second = await engine.readF32(out);
  if (first.some((v, i) => !Object.is(v, second[i]))) throw new Error("runs differ");
  tape.dispose();
  a.dispose();
  b.dispose();
});

gpuTest("matmul rejects mismatched shapes naming them", async (engine) => {
  const tape = new Tape(engine);
  const a = engine.tensor([3, 4]), b = engine.tensor([5, 6]), b3 = engine.tensor([2, 4, 6]);
  const a6 = engine.tensor([3, 6]);
  const expectShapeError = (f: () => unknown, fragment: string) => {
    try {
      f();
    } catch (e) {
      if (e instanceof ShapeError && e.message.includes(fragment)) return;
      throw e;
    }
    throw new Error(`no ShapeError mentioning "${fragment}"`);
  };
  expectShapeError(() => matmul(tape, a, b), "inner dimensions differ (4 and 5)");
  expectShapeError(
    () => matmul(tape, a6, b, { transB: true, bias: engine.tensor([4]) }),
    "bias must be [5]",
  );
  expectShapeError(() => matmul(tape, a, b3), "batched b");
  tape.dispose();
  for (const t of [a, a6, b, b3]) t.dispose();
  await Promise.resolve();
});
