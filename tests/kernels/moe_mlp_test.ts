import { throws } from "node:assert/strict";
import type { Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import { moeMlp } from "../../kernels/moe_mlp.ts";
import {
  moeMlpBackwardRef,
  type MoeMlpGrads,
  moeMlpRef,
  type MoeMlpShape,
} from "../ref/moe_mlp.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, probe, Rng } from "../util.ts";
import { assertSameBitsTwice, type GateKind, mixtureTolerance } from "./mixture_inputs.ts";
import { FROZEN, GRADS, inputs, type Tensors, upload, weightsOf } from "./moe_mlp_problem.ts";

// Tolerances: MIXTURE_TOL (tests/kernels/mixture_inputs.ts), relative to each tensor's largest
// reference value: f32 chains of dot products over C ≤ 768 and H ≤ 3072 terms.
const tol = mixtureTolerance;

const SCALE = 16 / Math.sqrt(8); // rsLoRA's alpha/√r at alpha 16, r 8

Deno.test("MoE MLP reference gradients match finite differences", () => {
  for (const gateKind of ["softmax", "sparse"] as const) {
    const shape = { rows: 3, embd: 5, hidden: 6, rank: 2, experts: 3 };
    const v = inputs(shape, 1, gateKind);
    const grads = moeMlpBackwardRef(shape, v, SCALE, v.dy);
    for (const name of GRADS) {
      const loss = (values: Float64Array) =>
        dot(moeMlpRef(shape, { ...v, [name]: values }, SCALE), v.dy);
      assertGradMatchesFD(loss, v[name], grads[name], `MoE d${name} (${gateKind} gates)`);
    }
  }
});

/**
 * Forward; backward into intermediates (every gradient overwritten); backward into leaves whose
 * gradients already hold values (every gradient accumulated).
 */
async function checkMoe(
  engine: Engine,
  shape: MoeMlpShape,
  gateKind: GateKind,
  biasBound = 0.5,
): Promise<void> {
  const { rows, embd, hidden, rank, experts } = shape;
  const what = `MoE N=${rows} C=${embd} H=${hidden} r=${rank} E=${experts} ${gateKind}`;
  const v = inputs(shape, rows + embd + hidden + rank + experts, gateKind);
  v.fcBias = f32(new Rng(9).uniform(hidden, -biasBound, biasBound));
  const yRef = moeMlpRef(shape, v, SCALE);
  const ref = moeMlpBackwardRef(shape, v, SCALE, v.dy);
  const t = upload(engine, shape, v);
  const dy = engine.tensor([rows, embd], { data: v.dy, label: "dy" });

  const tape = new Tape(engine);
  const probes = GRADS.map((name) => probe(tape, t[name]));
  const probed = Object.fromEntries(GRADS.map((name, i) => [name, probes[i].y]));
  const y = moeMlp(tape, probed.x, probed.gate, weightsOf({ ...t, ...probed }), SCALE);
  await engine.run(tape.forward());
  assertClose(await engine.readF32(y), yRef, tol(yRef), `${what} forward`);
  await engine.run(tape.backward(y, dy));
  for (const [i, name] of GRADS.entries()) {
    const got = await engine.readF32(probes[i].grad());
    assertClose(got, ref[name], tol(ref[name]), `${what} d${name} (overwrite)`);
  }

  const leafTape = new Tape(engine);
  const previous = GRADS.map((name, i) => {
    const values = f32(new Rng(i).uniform(t[name].size));
    t[name].requiresGrad = true;
    t[name].grad = engine.tensor(t[name].shape, { data: values, label: `grad ${name}` });
    return values;
  });
  const leafY = moeMlp(leafTape, t.x, t.gate, weightsOf(t), SCALE);
  await engine.run([...leafTape.forward(), ...leafTape.backward(leafY, dy)]);
  for (const [i, name] of GRADS.entries()) {
    const expected = previous[i].map((p, j) => p + ref[name as keyof MoeMlpGrads][j]);
    const got = await engine.readF32(t[name].grad!);
    assertClose(got, expected, tol(expected), `${what} d${name} (accumulate)`);
  }
  tape.dispose();
  leafTape.dispose();
  for (const tensor of [...Object.values(t), dy]) tensor.dispose();
}

// Awkward shapes: C, H or r not multiples of 4 (masked scalar loads), H whose column groups do
// not tile evenly (clamped duplicate groups), N past one 64-row block and not a multiple of the
// row tiles, E = 1 and E = 16, r = 1 and r = 12 (three rank tiles).
const awkward: [number, number, number, number, number][] = [
  [17, 12, 20, 3, 3],
  [17, 10, 18, 3, 3],
  [65, 16, 36, 4, 1],
  [70, 7, 30, 1, 2],
  [9, 8, 12, 2, 16],
  [130, 13, 44, 12, 2],
  [1, 1, 1, 1, 1],
];
for (const [rows, embd, hidden, rank, experts] of awkward) {
  for (const gateKind of ["sparse", "softmax"] as const) {
    gpuTest(
      `MoE MLP matches the reference, overwrite and accumulate (N=${rows} C=${embd} H=${hidden} r=${rank} E=${experts}, ${gateKind} gates)`,
      (engine) => checkMoe(engine, { rows, embd, hidden, rank, experts }, gateKind),
    );
  }
}

// The shipped base model (C 128, H 512, batch 8 × 128 = 1024 rows) with two experts, dense (k = 2)
// and with unselected experts (k = 1).
for (const gateKind of ["softmax", "sparse"] as const) {
  gpuTest(
    `MoE MLP at the base model's shape (N=1024, C=128, H=512, r=8, E=2, ${gateKind})`,
    (e) => checkMoe(e, { rows: 1024, embd: 128, hidden: 512, rank: 8, experts: 2 }, gateKind),
  );
}

// GPT-2 124M's MLP (C 768, H 3072) at 40 rows: the float64 reference at N = 1024 would take
// minutes; the kernels' per-row work is the same at any N (N-dependence is covered above).
gpuTest(
  "MoE MLP at GPT-2 124M's width (N=40, C=768, H=3072, r=8, E=2)",
  (e) => checkMoe(e, { rows: 40, embd: 768, hidden: 3072, rank: 8, experts: 2 }, "softmax"),
);

// pre_j far into GELU's tails (|pre| up to ~60, where e^(−2u) overflows f32): the backward's
// GELU slope must stay finite and exact there.
gpuTest(
  "MoE MLP is exact in GELU's tails (c_fc bias ~ U(±60))",
  (e) => checkMoe(e, { rows: 20, embd: 8, hidden: 48, rank: 4, experts: 2 }, "sparse", 60),
);

gpuTest("MoE MLP computes only the gradients asked for", async (e) => {
  const shape = { rows: 33, embd: 12, hidden: 24, rank: 4, experts: 3 };
  const v = inputs(shape, 5, "sparse");
  const ref = moeMlpBackwardRef(shape, v, SCALE, v.dy);
  const dy = e.tensor([33, 12], { data: v.dy, label: "dy" });
  for (const wanted of [["gate"], ["projB"], ["projA", "gate"], ["fcB"], ["x"], ["fcA"]]) {
    const t = upload(e, shape, v);
    for (const name of wanted) t[name as keyof Tensors].requiresGrad = true;
    const tape = new Tape(e);
    const y = moeMlp(tape, t.x, t.gate, weightsOf(t), SCALE);
    await e.run([...tape.forward(), ...tape.backward(y, dy)]);
    for (const name of GRADS) {
      if (!wanted.includes(name)) {
        if (t[name].grad) throw new Error(`d${name} computed though only ${wanted} asked`);
        continue;
      }
      assertClose(await e.readF32(t[name].grad!), ref[name], tol(ref[name]), `d${name} alone`);
    }
    tape.dispose();
    for (const tensor of Object.values(t)) tensor.dispose();
  }
  dy.dispose();
});

gpuTest("MoE MLP gradients give the same bits on two runs", async (e) => {
  const shape = { rows: 200, embd: 64, hidden: 256, rank: 8, experts: 3 };
  const v = inputs(shape, 4, "sparse");
  const t = upload(e, shape, v);
  const dy = e.tensor([200, 64], { data: v.dy, label: "dy" });
  for (const name of GRADS) t[name].requiresGrad = true;
  const tape = new Tape(e);
  const y = moeMlp(tape, t.x, t.gate, weightsOf(t), SCALE);
  const step = [...tape.forward(), ...tape.backward(y, dy)];
  const grads = GRADS.map((name) => t[name].grad!);
  const outputs = { y, ...Object.fromEntries(GRADS.map((name, i) => [`d${name}`, grads[i]])) };
  await assertSameBitsTwice(e, step, grads, outputs, "MoE");
  tape.dispose();
  for (const tensor of [...Object.values(t), dy]) tensor.dispose();
});

gpuTest("MoE MLP rejects misfit shapes and trainable base weights", async (e) => {
  await Promise.resolve();
  const shape = { rows: 4, embd: 8, hidden: 12, rank: 2, experts: 2 };
  const v = inputs(shape, 6, "softmax");
  const t = upload(e, shape, v);
  const tape = new Tape(e);
  moeMlp(tape, t.x, t.gate, weightsOf(t), SCALE);
  const wrong = [
    ["fcA", [2, 3, 8]],
    ["fcB", [2, 12, 3]],
    ["projA", [2, 2, 8]],
    ["projB", [3, 8, 2]],
    ["fcWeight", [8, 13]],
    ["fcBias", [8]],
    ["projWeight", [12, 7]],
    ["projBias", [12]],
    ["gate", [4, 3]],
    ["x", [5, 8]],
  ] as const;
  for (const [name, badShape] of wrong) {
    const bad = e.tensor(badShape, { label: `bad ${name}` });
    throws(
      () =>
        moeMlp(tape, name === "x" ? bad : t.x, name === "gate" ? bad : t.gate, {
          ...weightsOf(t),
          ...(name in weightsOf(t) ? { [name]: bad } : {}),
        }, SCALE),
      ShapeError,
      `bad ${name}`,
    );
    bad.dispose();
  }
  for (const name of FROZEN) {
    t[name].requiresGrad = true;
    throws(() => moeMlp(tape, t.x, t.gate, weightsOf(t), SCALE), /must be frozen/);
    t[name].requiresGrad = false;
  }
  tape.dispose();
  for (const tensor of Object.values(t)) tensor.dispose();
});
