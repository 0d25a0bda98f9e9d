import type { Engine } from "../../engine/device.ts";
import { Tape } from "../../engine/tape.ts";
import { mean, sum, sumRows } from "../../kernels/sum.ts";
import { meanRef, sumRef, sumRowsBackwardRef, sumRowsRef, totalBackwardRef } from "../ref/sum.ts";
import { assertClose, assertGradMatchesFD, dot, gpuTest, probe, Rng } from "../util.ts";

// Tolerance. A sum of R f32 values rounds once per addition, by at most u = 2⁻²⁴ times a partial
// sum, and partial sums are at most S = Σ|x|. The rounding errors have random signs and add up
// like u·√R·S; we allow 4× that. Dropping or doubling one of the R terms (|x| ~ S/R, far above
// u·√R·S for these R) breaks it. Backward passes copy dy (times 1/n for the mean, one rounding)
// and may add it to what is there (one more): 2u relative.
const U = 2 ** -24;
const ERROR_FACTOR = 4;
const BACKWARD_TOL = { atol: 0, rtol: 2 * U };

function assertSumClose(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  scale: ArrayLike<number>,
  terms: number,
  what: string,
) {
  const tolerance = ERROR_FACTOR * U * Math.sqrt(Math.max(1, terms));
  for (let i = 0; i < ref.length; i++) {
    const bound = tolerance * scale[i];
    if (!(Math.abs(got[i] - ref[i]) <= bound)) {
      throw new Error(
        `${what}: element ${i} is ${got[i]}, reference ${ref[i]} (bound ${bound.toExponential(2)})`,
      );
    }
  }
}

function uniformF32(rng: Rng, n: number): Float32Array {
  const values = new Float32Array(n);
  for (let i = 0; i < n; i++) values[i] = 2 * rng.next() - 1;
  return values;
}

type Reduction = "sumRows" | "sum" | "mean";

interface Case {
  op: Reduction;
  shape: number[];
  /** x's gradient: accumulated into a leaf's prefilled .grad, or assigned to an op output. */
  feed: "accumulate" | "overwrite";
  maxBindingBytes?: number;
}

async function checkCase(engine: Engine, c: Case): Promise<void> {
  const n = c.shape.reduce((x, y) => x * y);
  const cols = c.shape[c.shape.length - 1];
  const rng = new Rng(n + cols);
  const xs = uniformF32(rng, n);
  const outSize = c.op === "sumRows" ? cols : 1;
  const dys = uniformF32(rng, outSize);
  const before = c.feed === "accumulate" ? uniformF32(rng, n) : null;
  const tape = new Tape(engine);
  const leaf = engine.tensor(c.shape, { data: xs, label: "x" });
  leaf.requiresGrad = true;
  if (before) leaf.grad = engine.tensor(c.shape, { data: before, label: "grad x" });
  const fed = c.feed === "overwrite" ? probe(tape, leaf) : { y: leaf, grad: () => leaf.grad! };
  const opts = { maxBindingBytes: c.maxBindingBytes };
  const y = c.op === "sumRows"
    ? sumRows(tape, fed.y, opts)
    : c.op === "sum"
    ? sum(tape, fed.y, opts)
    : mean(tape, fed.y, opts);
  const dy = engine.tensor([outSize], { data: dys, label: "dy" });
  try {
    await engine.run(tape.forward());
    const abs = Float64Array.from(xs, Math.abs);
    if (c.op === "sumRows") {
      assertSumClose(
        await engine.readF32(y),
        sumRowsRef(xs, cols),
        sumRowsRef(abs, cols),
        n / cols,
        "forward",
      );
    } else {
      const scale = c.op === "mean" ? 1 / n : 1;
      const ref = c.op === "mean" ? meanRef(xs) : sumRef(xs);
      // The mean's 1/n adds one rounding: a second term u·|ref|.
      assertSumClose(
        await engine.readF32(y),
        [ref],
        [sumRef(abs) * scale + Math.abs(ref)],
        n,
        "forward",
      );
    }
    await engine.run(tape.backward(y, dy));
    let dx = c.op === "sumRows"
      ? sumRowsBackwardRef(dys, n / cols)
      : totalBackwardRef(n, dys[0], c.op === "mean");
    if (before) dx = dx.map((v, i) => v + before[i]);
    assertClose(await engine.readF32(fed.grad()), dx, BACKWARD_TOL, "backward");
  } finally {
    tape.dispose();
    leaf.dispose();
    dy.dispose();
  }
}

Deno.test("sum references' gradients match finite differences", () => {
  const rng = new Rng(3);
  const x = rng.uniform(5 * 7);
  const dy = rng.uniform(7);
  assertGradMatchesFD((v) => dot(sumRowsRef(v, 7), dy), x, sumRowsBackwardRef(dy, 5), "sumRows");
  assertGradMatchesFD((v) => 0.7 * sumRef(v), x, totalBackwardRef(x.length, 0.7, false), "sum");
  assertGradMatchesFD((v) => 0.7 * meanRef(v), x, totalBackwardRef(x.length, 0.7, true), "mean");
});

const cases: Case[] = [];
// Awkward shapes: runs of rows and elements that are not whole passes, odd widths (scalar path).
for (
  const [rows, cols] of [[1, 1], [3, 17], [17, 3], [65, 127], [127, 65], [1, 64], [129, 4], [
    4100,
    3,
  ]]
) {
  cases.push({ op: "sumRows", shape: [rows, cols], feed: rows % 2 ? "overwrite" : "accumulate" });
}
for (const n of [1, 3, 17, 65, 127, 257, 65 * 127, 70001]) {
  cases.push({ op: "sum", shape: [n], feed: n % 4 === 1 ? "overwrite" : "accumulate" });
  cases.push({ op: "mean", shape: [n], feed: n % 4 === 1 ? "accumulate" : "overwrite" });
}
// Leading dimensions fold into rows.
cases.push({ op: "sumRows", shape: [2, 65, 17], feed: "overwrite" });
cases.push({ op: "mean", shape: [3, 5, 7], feed: "accumulate" });
// GPT-2 sizes: the c_fc bias gradient over B·T = 1024 rows, and a mean over 1024 × 768.
cases.push({ op: "sumRows", shape: [8, 128, 3072], feed: "accumulate" });
cases.push({ op: "sumRows", shape: [1024, 768], feed: "overwrite" });
cases.push({ op: "mean", shape: [1024, 768], feed: "overwrite" });
// Bindings limited to a few KiB: inputs and gradients read and written in chunks.
cases.push({ op: "sumRows", shape: [700, 24], feed: "overwrite", maxBindingBytes: 8192 });
cases.push({ op: "sumRows", shape: [300, 17], feed: "accumulate", maxBindingBytes: 4096 });
cases.push({ op: "sum", shape: [10000], feed: "accumulate", maxBindingBytes: 4096 });
cases.push({ op: "mean", shape: [9999], feed: "overwrite", maxBindingBytes: 4096 });

for (const c of cases) {
  const limit = c.maxBindingBytes ? `, bindings ≤ ${c.maxBindingBytes} B` : "";
  gpuTest(
    `${c.op} forward and backward match the float64 reference ([${c.shape}], ${c.feed}${limit})`,
    (engine) => checkCase(engine, c),
  );
}

gpuTest("sum and sumRows give the same bits on every run", async (engine) => {
  const rng = new Rng(4);
  const tape = new Tape(engine);
  const x = engine.tensor([1000, 24], { data: uniformF32(rng, 24000) });
  const total = sum(tape, x), columns = sumRows(tape, x);
  const results: Float32Array[] = [];
  for (let run = 0; run < 2; run++) {
    await engine.run(tape.forward());
    results.push(
      new Float32Array([...await engine.readF32(total), ...await engine.readF32(columns)]),
    );
  }
  if (results[0].some((v, i) => !Object.is(v, results[1][i]))) throw new Error("runs differ");
  tape.dispose();
  x.dispose();
});
