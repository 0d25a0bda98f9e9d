import { throws } from "node:assert/strict";
import { loraLinear } from "../../kernels/lora.ts";
import type { Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import { loraBackwardRef, type LoraGrads, loraRef, type LoraShape } from "../ref/lora.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, probe, Rng } from "../util.ts";

// f32 dot products: u sums `in` terms (≤ 3072), du sums `out` terms, dA and dB sum N ≤ 1024
// rows (64-row partials, then ≤ 16 partials). Rounding error grows like √K·2⁻²⁴ times the size
// of the partial sums, which is the size of the largest outputs, not of each output: dA's
// entries cancel down to ~0.1 among entries of ~1000. So the absolute slack is relative to the
// largest reference value of the tensor (√3072·6e-8 ≈ 3e-6, with margin).
const RTOL = 2e-5;
const ATOL_OF_MAX = 2e-5;

function tol(ref: ArrayLike<number>) {
  let max = 0;
  for (let i = 0; i < ref.length; i++) max = Math.max(max, Math.abs(ref[i]));
  return { atol: ATOL_OF_MAX * max, rtol: RTOL };
}

interface Inputs {
  x: Float64Array;
  base: Float64Array;
  a: Float64Array;
  b: Float64Array;
  dy: Float64Array;
}

/** x, base, dy ~ U(−1, 1); A at its init scale U(±1/√in); B ~ U(±0.5) (0 at init, but a zero B
 * would hide half the math). All rounded to f32. */
function inputs(shape: LoraShape, seed: number): Inputs {
  const { rows, inFeatures, outFeatures, rank } = shape;
  const rng = new Rng(seed);
  const bound = 1 / Math.sqrt(inFeatures);
  return {
    x: f32(rng.uniform(rows * inFeatures)),
    base: f32(rng.uniform(rows * outFeatures)),
    a: f32(rng.uniform(rank * inFeatures, -bound, bound)),
    b: f32(rng.uniform(outFeatures * rank, -0.5, 0.5)),
    dy: f32(rng.uniform(rows * outFeatures)),
  };
}

const SCALE = 16 / Math.sqrt(8); // rsLoRA's alpha/√r at alpha 16, r 8

Deno.test("LoRA reference gradients match finite differences", () => {
  const shape = { rows: 3, inFeatures: 5, outFeatures: 4, rank: 2 };
  const v = inputs(shape, 1);
  const grads = loraBackwardRef(shape, v.x, v.a, v.b, SCALE, v.dy);
  const y = (w: Partial<Inputs>) => {
    const { x, base, a, b } = { ...v, ...w };
    return dot(loraRef(shape, x, base, a, b, SCALE), v.dy);
  };
  assertGradMatchesFD((x) => y({ x }), v.x, grads.dx, "LoRA dx");
  assertGradMatchesFD((base) => y({ base }), v.base, grads.dbase, "LoRA dbase");
  assertGradMatchesFD((a) => y({ a }), v.a, grads.da, "LoRA dA");
  assertGradMatchesFD((b) => y({ b }), v.b, grads.db, "LoRA dB");
});

const NAMES = ["dx", "dbase", "da", "db"] as const;

/**
 * Forward; backward into intermediates (every gradient overwritten); backward into leaves whose
 * gradients already hold values (every gradient accumulated).
 */
async function checkLora(engine: Engine, shape: LoraShape): Promise<void> {
  const { rows, inFeatures, outFeatures, rank } = shape;
  const what = `LoRA N=${rows} in=${inFeatures} out=${outFeatures} r=${rank}`;
  const v = inputs(shape, rows + inFeatures + outFeatures + rank);
  const ref = loraBackwardRef(shape, v.x, v.a, v.b, SCALE, v.dy);
  const shapes = [[rows, inFeatures], [rows, outFeatures], [rank, inFeatures], [outFeatures, rank]];
  const tensors = [v.x, v.base, v.a, v.b].map((data, i) =>
    engine.tensor(shapes[i], { data, label: ["x", "base", "A", "B"][i] })
  );
  const dy = engine.tensor([rows, outFeatures], { data: v.dy, label: "dy" });

  const tape = new Tape(engine);
  const probes = tensors.map((t) => probe(tape, t));
  const [x, base, a, b] = probes.map((p) => p.y);
  const y = loraLinear(tape, x, base, a, b, SCALE);
  await engine.run(tape.forward());
  const yRef = loraRef(shape, v.x, v.base, v.a, v.b, SCALE);
  assertClose(await engine.readF32(y), yRef, tol(yRef), `${what} forward`);
  await engine.run(tape.backward(y, dy));
  for (const [i, p] of probes.entries()) {
    assertClose(
      await engine.readF32(p.grad()),
      ref[NAMES[i]],
      tol(ref[NAMES[i]]),
      `${what} ${NAMES[i]} (overwrite)`,
    );
  }

  const leafTape = new Tape(engine);
  const previous = tensors.map((t, i) => {
    const values = f32(new Rng(i).uniform(t.size));
    t.requiresGrad = true;
    t.grad = engine.tensor(t.shape, { data: values, label: `grad ${t.label}` });
    return values;
  });
  const leafY = loraLinear(leafTape, tensors[0], tensors[1], tensors[2], tensors[3], SCALE);
  await engine.run([...leafTape.forward(), ...leafTape.backward(leafY, dy)]);
  for (const [i, t] of tensors.entries()) {
    const expected = previous[i].map((p, j) => p + ref[NAMES[i] as keyof LoraGrads][j]);
    assertClose(
      await engine.readF32(t.grad!),
      expected,
      tol(expected),
      `${what} ${NAMES[i]} (accumulate)`,
    );
  }
  tape.dispose();
  leafTape.dispose();
  for (const t of [...tensors, dy]) t.dispose();
}

// Awkward shapes: sizes not multiples of 4 (scalar loads), N over one 64-row block, ranks
// spanning two rank tiles (12) or eight (64).
const awkward: [number, number, number, number][] = [
  [1, 1, 1, 1],
  [3, 5, 7, 2],
  [17, 13, 6, 3],
  [65, 64, 20, 8],
  [130, 17, 33, 5],
  [127, 40, 12, 12],
  [70, 8, 8, 64],
];
for (const [rows, inFeatures, outFeatures, rank] of awkward) {
  gpuTest(
    `LoRA matches the reference, overwrite and accumulate (N=${rows}, ${inFeatures}→${outFeatures}, r=${rank})`,
    (engine) => checkLora(engine, { rows, inFeatures, outFeatures, rank }),
  );
}

// GPT-2's MLP (c_fc 768→3072, c_proj 3072→768) at T = 1024, and the reference config's c_fc.
for (const [inFeatures, outFeatures] of [[768, 3072], [3072, 768], [256, 1024]]) {
  gpuTest(
    `LoRA at model sizes (N=1024, ${inFeatures}→${outFeatures}, r=8)`,
    (engine) => checkLora(engine, { rows: 1024, inFeatures, outFeatures, rank: 8 }),
  );
}

gpuTest("LoRA given one tensor as both x and base accumulates both gradients", async (e) => {
  const shape = { rows: 70, inFeatures: 12, outFeatures: 12, rank: 4 };
  const v = inputs(shape, 3);
  const ref = loraBackwardRef(shape, v.x, v.a, v.b, SCALE, v.dy);
  const x = e.tensor([70, 12], { data: v.x, label: "x" });
  const a = e.tensor([4, 12], { data: v.a, label: "A" });
  const b = e.tensor([12, 4], { data: v.b, label: "B" });
  const dy = e.tensor([70, 12], { data: v.dy, label: "dy" });
  const tape = new Tape(e);
  const probed = probe(tape, x);
  const y = loraLinear(tape, probed.y, probed.y, a, b, SCALE);
  await e.run(tape.forward());
  const yRef = loraRef(shape, v.x, v.x, v.a, v.b, SCALE);
  assertClose(await e.readF32(y), yRef, tol(yRef), "forward");
  await e.run(tape.backward(y, dy));
  const expected = ref.dx.map((d, i) => d + ref.dbase[i]);
  assertClose(await e.readF32(probed.grad()), expected, tol(expected), "dx + dbase");
  tape.dispose();
  for (const t of [x, a, b, dy]) t.dispose();
});

gpuTest("LoRA gradients give the same bits on two runs", async (e) => {
  const shape = { rows: 300, inFeatures: 96, outFeatures: 160, rank: 8 };
  const v = inputs(shape, 4);
  const tensors = [v.x, v.base, v.a, v.b].map((data, i) =>
    e.tensor([[300, 96], [300, 160], [8, 96], [160, 8]][i], { data, label: `input ${i}` })
  );
  const dy = e.tensor([300, 160], { data: v.dy, label: "dy" });
  for (const t of tensors) t.requiresGrad = true;
  const tape = new Tape(e);
  const y = loraLinear(tape, tensors[0], tensors[1], tensors[2], tensors[3], SCALE);
  const step = [...tape.forward(), ...tape.backward(y, dy)];
  const bits: Uint32Array[][] = [];
  for (let run = 0; run < 2; run++) {
    for (const t of tensors) await e.run([{ kind: "clear", label: "zero", tensor: t.grad! }]);
    await e.run(step);
    bits.push(
      await Promise.all(
        tensors.map(async (t) => new Uint32Array((await e.readF32(t.grad!)).buffer)),
      ),
    );
  }
  for (let i = 0; i < tensors.length; i++) {
    if (bits[0][i].some((word, j) => word !== bits[1][i][j])) {
      throw new Error(`LoRA gradient ${NAMES[i]} differs between two runs`);
    }
  }
  tape.dispose();
  for (const t of [...tensors, dy]) t.dispose();
});

gpuTest("LoRA rejects shapes that do not fit together", async (e) => {
  await Promise.resolve();
  const tape = new Tape(e);
  const x = e.tensor([4, 6], { label: "x" });
  const base = e.tensor([4, 5], { label: "base" });
  const a = e.tensor([2, 6], { label: "A" });
  const b = e.tensor([5, 2], { label: "B" });
  const wrongA = e.tensor([2, 5], { label: "A" });
  const wrongB = e.tensor([5, 3], { label: "B" });
  const wrongBase = e.tensor([3, 5], { label: "base" });
  loraLinear(tape, x, base, a, b, 1);
  throws(() => loraLinear(tape, x, base, wrongA, b, 1), ShapeError);
  throws(() => loraLinear(tape, x, base, a, wrongB, 1), ShapeError);
  throws(() => loraLinear(tape, x, wrongBase, a, b, 1), ShapeError);
  tape.dispose();
  for (const t of [x, base, a, b, wrongA, wrongB, wrongBase]) t.dispose();
});
