import { throws } from "node:assert/strict";
import {
  checkTargets,
  crossEntropy,
  crossEntropyWithRowLosses,
  rowQuantum,
} from "../../kernels/cross_entropy.ts";
import type { Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { crossEntropyBackwardRef, crossEntropyRef } from "../ref/cross_entropy.ts";
import { assertClose, assertGradMatchesFD, gpuTest, probe, Rng } from "../util.ts";

// Row losses: logsumexp accumulates V exp terms in f32 (≤ ~1000 per invocation, then a 64-way
// tree): relative error of Σexp ~1e-6, so ~1e-6 absolute on log Σ, on top of f32 rounding of
// |max| ≤ 100. The mean adds N more f32 additions.
const LOSS_TOL = { atol: 2e-5, rtol: 2e-6 };
// dlogits = (p − onehot)/N: exp(x − max) in f32 has relative error ~|x − max|·2⁻²⁴ (up to ~1e-5
// for logits spread over ±100) plus the relative error of Σexp; the absolute slack (scaled by
// 1/N at the call) covers onehot entries where p − 1 cancels.
const GRAD_RTOL = 2e-5;
const GRAD_ATOL_TIMES_N = 1e-6;

function gradTol(rows: number) {
  return { atol: GRAD_ATOL_TIMES_N / rows, rtol: GRAD_RTOL };
}

Deno.test("cross-entropy reference gradient matches finite differences", () => {
  const rng = new Rng(3);
  const [rows, vocab] = [3, 7];
  const logits = rng.uniform(rows * vocab, -3, 3);
  const targets = rng.int(rows, vocab);
  const upstream = 0.7;
  assertGradMatchesFD(
    (x) => upstream * crossEntropyRef(x, targets, vocab).loss,
    logits,
    crossEntropyBackwardRef(logits, targets, vocab, upstream),
    "cross-entropy",
  );
});

/** Logits rounded to f32 (the GPU's numbers) and targets, seeded. */
function problem(rows: number, vocab: number, seed: number, spread = 4) {
  const rng = new Rng(seed);
  const logits = new Float32Array(rows * vocab);
  for (let i = 0; i < logits.length; i++) logits[i] = spread * (2 * rng.next() - 1);
  return { logits, targets: rng.int(rows, vocab) };
}

interface Paths {
  /** Unit upstream into an intermediate (overwrite): the buffer-copy path. */
  copy?: boolean;
  /** Upstream g into an intermediate (overwrite): the scaling kernel. */
  scaled?: boolean;
  /** Unit and scaled upstream into a leaf holding a previous gradient: accumulate. */
  accumulate?: boolean;
}

interface CaseOptions {
  chunkRows?: number;
  spread?: number;
  /** Compare gradients on three aligned row blocks (first, middle, last) instead of all rows. */
  sampled?: boolean;
}

/** Row blocks [start, count) whose views are aligned: all rows, or three quantum-sized ones. */
function rowBlocks(engine: Engine, rows: number, sampled: boolean): [number, number][] {
  if (!sampled) return [[0, rows]];
  const q = rowQuantum(engine);
  const last = Math.floor((rows - 1) / q) * q;
  const middle = Math.floor(rows / 2 / q) * q;
  return [[0, q], [middle, q], [last, rows - last]];
}

async function checkCrossEntropy(
  engine: Engine,
  rows: number,
  vocab: number,
  paths: Paths,
  opts: CaseOptions = {},
): Promise<void> {
  const { logits, targets } = problem(rows, vocab, rows * 1000 + vocab, opts.spread);
  const ref = crossEntropyRef(logits, targets, vocab);
  const what = `cross-entropy ${rows}×${vocab}`;
  const tol = gradTol(rows);
  const blocks = rowBlocks(engine, rows, opts.sampled ?? false);
  const blockRefs = blocks.map(([start, count]) =>
    crossEntropyBackwardRef(
      logits.subarray(start * vocab, (start + count) * vocab),
      targets.subarray(start, start + count),
      vocab,
      1,
      rows,
    )
  );
  /** Compares `grad` with previous + factor·dlogits on every block. */
  const checkGrad = async (grad: Tensor, factor: number, path: string, previous?: Float64Array) => {
    for (const [b, [start, count]] of blocks.entries()) {
      const got = await engine.readF32(engine.view(grad, start * vocab, [count * vocab]));
      const expected = blockRefs[b].map((d, i) =>
        (previous ? previous[start * vocab + i] : 0) + factor * d
      );
      assertClose(got, expected, tol, `${what} dlogits rows ${start}+${count} (${path})`);
    }
  };

  const tape = new Tape(engine);
  const x = engine.tensor([rows, vocab], { data: logits, label: "logits" });
  const t = engine.tensor([rows], { data: targets, dtype: "u32", label: "targets" });
  const probed = probe(tape, x);
  const { loss, rowLosses } = crossEntropyWithRowLosses(tape, probed.y, t, opts);
  await engine.run(tape.forward());
  assertClose(await engine.readF32(rowLosses), ref.rowLosses, LOSS_TOL, `${what} row losses`);
  assertClose(await engine.readF32(loss), [ref.loss], LOSS_TOL, `${what} loss`);
  if (paths.copy) {
    await engine.run(tape.backward(loss));
    await checkGrad(probed.grad(), 1, "copy");
  }
  const upstream = 0.375;
  const g = engine.tensor([1], { data: [upstream], label: "upstream" });
  if (paths.scaled) {
    await engine.run(tape.backward(loss, g));
    await checkGrad(probed.grad(), upstream, "scaled");
  }
  if (paths.accumulate) {
    // Straight onto a leaf: its gradient accumulates onto what is there.
    // (Sampled cases start from the zero gradient the tape allocates: uploading a previous
    // gradient as large as the logits costs seconds here.)
    const leafTape = new Tape(engine);
    const previous = opts.sampled ? undefined : new Rng(9).uniform(rows * vocab, -1e-3, 1e-3);
    x.requiresGrad = true;
    if (previous) x.grad = engine.tensor([rows, vocab], { data: previous, label: "grad logits" });
    const leafLoss = crossEntropy(leafTape, x, t, opts);
    await engine.run([...leafTape.forward(), ...leafTape.backward(leafLoss)]);
    await engine.run(leafTape.backward(leafLoss, g));
    await checkGrad(x.grad!, 1 + upstream, "accumulate", previous);
    leafTape.dispose();
  }
  tape.dispose();
  for (const tensor of [x, t, g]) tensor.dispose();
}

for (const [rows, vocab] of [[1, 1], [3, 5], [17, 64], [65, 127], [7, 1000], [2, 4099]]) {
  gpuTest(
    `cross-entropy matches the reference on every gradient path (${rows}×${vocab})`,
    (e) => checkCrossEntropy(e, rows, vocab, { copy: true, scaled: true, accumulate: true }),
  );
}

for (const vocab of [64, 127]) {
  gpuTest(
    `cross-entropy split into row chunks matches the reference (203×${vocab})`,
    (e) =>
      checkCrossEntropy(e, 203, vocab, { copy: true, scaled: true, accumulate: true }, {
        chunkRows: 64,
      }),
  );
}

gpuTest(
  "cross-entropy at the reference config (1024×8192)",
  (e) => checkCrossEntropy(e, 1024, 8192, { copy: true, accumulate: true }, { sampled: true }),
);

// GPT-2's vocabulary with random logits, on 256 rows in 64-row chunks: at 1024 rows, host-side
// uploads and zero-fills of the 206 MB tensors alone take over 10 s here. Gradients are compared
// on three row blocks.
gpuTest(
  "cross-entropy at GPT-2's vocabulary (256×50257 in 64-row chunks)",
  (e) =>
    checkCrossEntropy(e, 256, 50257, { copy: true, accumulate: true }, {
      chunkRows: 64,
      sampled: true,
    }),
);

// The full GPT-2 batch (1024×50257, 206 MB, over one binding) with the default chunking: every
// chunk's binding must pass the engine's size check, and zero logits give loss ln V per row.
gpuTest(
  "cross-entropy of 206 MB of GPT-2 logits runs in chunks under the binding limit",
  async (e) => {
    const [rows, vocab] = [1024, 50257];
    const tape = new Tape(e);
    const x = e.tensor([rows, vocab], { label: "logits" });
    const t = e.tensor([rows], {
      data: new Rng(2).int(rows, vocab),
      dtype: "u32",
      label: "targets",
    });
    const { loss, rowLosses } = crossEntropyWithRowLosses(tape, x, t);
    await e.run(tape.forward());
    const lnV = Math.log(vocab);
    assertClose(
      await e.readF32(rowLosses),
      new Float64Array(rows).fill(lnV),
      LOSS_TOL,
      "row losses",
    );
    assertClose(await e.readF32(loss), [lnV], LOSS_TOL, "loss");
    tape.dispose();
    x.dispose();
    t.dispose();
  },
);

gpuTest(
  "cross-entropy of logits spread over ±100 stays finite and accurate",
  (e) => checkCrossEntropy(e, 33, 1000, { copy: true }, { spread: 100 }),
);

gpuTest("cross-entropy gives the same bits on two runs", async (engine) => {
  const [rows, vocab] = [203, 127];
  const { logits, targets } = problem(rows, vocab, 5);
  const tape = new Tape(engine);
  const x = engine.tensor([rows, vocab], { data: logits, label: "logits" });
  const t = engine.tensor([rows], { data: targets, dtype: "u32", label: "targets" });
  const probed = probe(tape, x);
  const { loss, rowLosses } = crossEntropyWithRowLosses(tape, probed.y, t, { chunkRows: 64 });
  const step = [...tape.forward(), ...tape.backward(loss)];
  const results: Uint32Array[][] = [];
  for (let run = 0; run < 2; run++) {
    await engine.run(step);
    results.push(
      await Promise.all(
        [loss, rowLosses, probed.grad()].map(async (r) =>
          new Uint32Array((await engine.readF32(r)).buffer)
        ),
      ),
    );
  }
  for (let i = 0; i < 3; i++) {
    if (results[0][i].some((bits, j) => bits !== results[1][i][j])) {
      throw new Error(`cross-entropy output ${i} differs between two runs`);
    }
  }
  tape.dispose();
  x.dispose();
  t.dispose();
});

gpuTest("cross-entropy reports NaN for an out-of-range target, other rows intact", async (e) => {
  const [rows, vocab] = [4, 10];
  const { logits, targets } = problem(rows, vocab, 11);
  const ref = crossEntropyRef(logits, targets, vocab);
  const bad = Uint32Array.from(targets);
  bad[2] = vocab + 5;
  throws(() => checkTargets(bad, vocab), ShapeError);
  checkTargets(targets, vocab);
  const tape = new Tape(e);
  const x = e.tensor([rows, vocab], { data: logits, label: "logits" });
  const t = e.tensor([rows], { data: bad, dtype: "u32", label: "targets" });
  const { rowLosses } = crossEntropyWithRowLosses(tape, x, t);
  await e.run(tape.forward());
  const got = await e.readF32(rowLosses);
  if (!Number.isNaN(got[2])) throw new Error(`row 2 loss ${got[2]} should be NaN`);
  assertClose([got[0], got[1], got[3]], [0, 1, 3].map((r) => ref.rowLosses[r]), LOSS_TOL, "rows");
  tape.dispose();
  x.dispose();
  t.dispose();
});

gpuTest("cross-entropy rejects mismatched shapes and misaligned chunks", async (e) => {
  await Promise.resolve();
  const tape = new Tape(e);
  const x = e.tensor([6, 10], { label: "logits" });
  const t = e.tensor([5], { dtype: "u32", label: "targets" });
  const t6 = e.tensor([6], { dtype: "u32", label: "targets" });
  throws(() => crossEntropy(tape, x, t), ShapeError);
  throws(() => crossEntropy(tape, x, x), ShapeError);
  throws(() => crossEntropy(tape, x, t6, { chunkRows: rowQuantum(e) + 1 }), ShapeError);
  tape.dispose();
  for (const tensor of [x, t, t6]) tensor.dispose();
});
