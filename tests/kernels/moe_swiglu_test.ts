import { throws } from "node:assert/strict";
import type { Engine } from "../../engine/device.ts";
import { LimitError, ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import { moeSwiglu } from "../../kernels/moe_swiglu.ts";
import { MAX_EXPERTS } from "../../kernels/topk_gate.ts";
import type { KernelVariant } from "../../kernels/variant.ts";
import type { MixtureShape } from "../ref/mixture.ts";
import { moeSwigluBackwardRef, moeSwigluRef } from "../ref/moe_swiglu.ts";
import { assertEquals } from "../assert.ts";
import { assertGradMatchesFD, dot, f32, gpuTest, probe, Rng } from "../util.ts";
import { assertSameBitsTwice, type GateKind, spreadRows } from "./mixture_inputs.ts";
import {
  checkRun,
  FROZEN,
  GRADS,
  problem,
  reference,
  upload,
  weightsOf,
} from "./moe_swiglu_problem.ts";

// Tolerances: MIXTURE_TOL (tests/kernels/mixture_inputs.ts), relative to each tensor's largest
// reference value, as for GPT-2's mixture: the same f32 chains of dot products, SwiGLU's product
// of two of them in place of GELU.

const SCALE = 16 / Math.sqrt(8); // rsLoRA's alpha/√r at alpha 16, r 8

const shapeOf = (rows: number, embd: number, hidden: number, rank: number, experts: number) => ({
  rows,
  embd,
  hidden,
  rank,
  experts,
});
const describe = (s: MixtureShape) =>
  `N=${s.rows} C=${s.embd} I=${s.hidden} r=${s.rank} E=${s.experts}`;

Deno.test("MoE SwiGLU reference gradients match finite differences", () => {
  for (const gateKind of ["softmax", "sparse"] as const) {
    const shape = shapeOf(3, 5, 6, 2, 3);
    const p = problem(shape, 1, gateKind);
    const v = p.values;
    const grads = moeSwigluBackwardRef(shape, v, SCALE, p.dy);
    for (const name of GRADS) {
      const loss = (values: Float64Array) =>
        dot(moeSwigluRef(shape, { ...v, [name]: values }, SCALE), p.dy);
      assertGradMatchesFD(loss, v[name], grads[name], `MoE SwiGLU d${name} (${gateKind} gates)`);
    }
  }
});

interface CheckOptions {
  variant?: KernelVariant;
  /** Rows dy is nonzero on (and checked on); all by default. */
  checked?: number[];
  /** Spread of the gate and up projections (g, u ≈ N(0, spread²)). */
  spread?: number;
  maxBindingBytes?: number;
}

/**
 * Forward; backward into intermediates (every gradient overwritten); backward into leaves whose
 * gradients already hold values (every gradient accumulated).
 */
async function checkMoe(
  engine: Engine,
  shape: MixtureShape,
  gateKind: GateKind,
  opts: CheckOptions = {},
): Promise<void> {
  const what = `MoE SwiGLU ${describe(shape)} ${gateKind} ${opts.variant ?? "engine's variant"}`;
  const seed = shape.rows + shape.embd + shape.hidden + shape.rank + shape.experts;
  const p = problem(shape, seed, gateKind, opts);
  const ref = reference(p, SCALE);
  const { t, dy } = upload(engine, p);
  const kernelOpts = { variant: opts.variant, maxBindingBytes: opts.maxBindingBytes };

  const tape = new Tape(engine);
  const probes = GRADS.map((name) => probe(tape, t[name]));
  const probed = Object.fromEntries(GRADS.map((name, i) => [name, probes[i].y]));
  const y = moeSwiglu(
    tape,
    probed.x,
    probed.gate,
    weightsOf({ ...t, ...probed }),
    SCALE,
    kernelOpts,
  );
  const backward = tape.backward(y, dy);
  // Garbage where each gradient will be written: an overwrite must not read it.
  const overwritten = Object.fromEntries(GRADS.map((name, i) => {
    const grad = probes[i].grad();
    engine.write(grad, new Float32Array(grad.size).fill(1e30));
    return [name, grad];
  }));
  await engine.run([...tape.forward(), ...backward]);
  await checkRun(engine, p, ref, { y, grads: overwritten }, `${what} (overwrite)`);

  const leafTape = new Tape(engine);
  const before = Object.fromEntries(GRADS.map((name, i) => {
    const values = f32(new Rng(i).uniform(t[name].size));
    t[name].requiresGrad = true;
    t[name].grad = engine.tensor(t[name].shape, { data: values, label: `grad ${name}` });
    return [name, values];
  }));
  const leafY = moeSwiglu(leafTape, t.x, t.gate, weightsOf(t), SCALE, kernelOpts);
  await engine.run([...leafTape.forward(), ...leafTape.backward(leafY, dy)]);
  const accumulated = Object.fromEntries(GRADS.map((name) => [name, t[name].grad!]));
  await checkRun(engine, p, ref, { y: leafY, grads: accumulated }, `${what} (accumulate)`, before);
  tape.dispose();
  leafTape.dispose();
  for (const tensor of [...Object.values(t), ...Object.values(accumulated), dy]) tensor.dispose();
}

// Awkward shapes: N odd, past one 64-row block and not a multiple of the row tiles; C and I not
// multiples of 4 (masked scalar loads); I whose column groups do not tile evenly (clamped
// duplicate groups); r ∈ {1, 3, 8} (one rank group, a partial one, two); E ∈ {1, 2, 3, 8}, E = 1
// with a gate of ones (no router). Gates softmax (sum 1) or sparse (zeros, sums ≠ 1).
const awkward: [MixtureShape, GateKind][] = [
  [shapeOf(17, 12, 20, 3, 3), "sparse"],
  [shapeOf(17, 10, 18, 3, 2), "softmax"],
  [shapeOf(65, 7, 30, 1, 2), "sparse"],
  [shapeOf(9, 13, 44, 8, 8), "sparse"],
  [shapeOf(9, 13, 44, 8, 8), "softmax"],
  [shapeOf(71, 16, 36, 8, 1), "ones"],
  [shapeOf(33, 6, 22, 1, 1), "sparse"],
  [shapeOf(1, 1, 1, 1, 1), "ones"],
];
for (const [shape, gateKind] of awkward) {
  for (const variant of ["texture", "storage"] as const) {
    gpuTest(
      `MoE SwiGLU matches the reference, overwrite and accumulate (${
        describe(shape)
      }, ${gateKind} gates, ${variant})`,
      (engine) => checkMoe(engine, shape, gateKind, { variant }),
    );
  }
}

// SmolLM2-135M's MLP (C 576, I 1536) at batch 8 × 128 tokens, two experts, dense (k = 2) and
// with unselected experts (k = 1), in the engine's variant (COMIGS_VARIANT): checked on 8 spread
// rows (dy zero elsewhere), since the float64 reference over all 1024 rows would take minutes.
for (const gateKind of ["softmax", "sparse"] as const) {
  gpuTest(
    `MoE SwiGLU at SmolLM2-135M's shape (N=1024, C=576, I=1536, r=8, E=2, ${gateKind})`,
    (engine) =>
      checkMoe(engine, shapeOf(1024, 576, 1536, 8, 2), gateKind, {
        checked: spreadRows(1024, 8),
      }),
  );
}

// g far into SiLU's tails (std ≈ 58; 39 of the 960 values of x·W_gᵀ are below −88.7, where
// e^(−g) overflows f32): silu and its slope must stay finite and exact there.
gpuTest(
  "MoE SwiGLU is exact in SiLU's tails (gate projections ~ N(0, 58²))",
  (e) => checkMoe(e, shapeOf(20, 8, 48, 4, 2), "sparse", { spread: 100 }),
);

// The frozen products split into blocks where a weight exceeds a binding (here: as if one could
// hold 2 KiB; each weight is 44·41·4 = 7,216 bytes), the mixture's own tensors still fitting
// (g_j, u_j: 2·3·44·4 = 1,056 bytes).
for (const variant of ["texture", "storage"] as const) {
  gpuTest(
    `MoE SwiGLU with frozen products split over the binding limit (${variant})`,
    async (e) => {
      const shape = shapeOf(3, 41, 44, 3, 2);
      await checkMoe(e, shape, "sparse", { variant, maxBindingBytes: 2048 });
      // ... and they were split: more forward dispatches than without the limit.
      const { t, dy } = upload(e, problem(shape, 3, "sparse"));
      const dispatches = (maxBindingBytes?: number) => {
        const tape = new Tape(e);
        moeSwiglu(tape, t.x, t.gate, weightsOf(t), SCALE, { variant, maxBindingBytes });
        const count = tape.forward().length;
        tape.dispose();
        return count;
      };
      const [whole, split] = [dispatches(), dispatches(2048)];
      if (!(split > whole)) throw new Error(`${split} dispatches split, ${whole} whole`);
      for (const tensor of [...Object.values(t), dy]) tensor.dispose();
    },
  );
}

gpuTest("MoE SwiGLU computes only the gradients asked for, every subset", async (e) => {
  const shape = shapeOf(19, 6, 10, 3, 3);
  const p = problem(shape, 5, "sparse");
  const ref = reference(p, SCALE);
  const { t, dy } = upload(e, p);
  for (let mask = 1; mask < 1 << GRADS.length; mask++) {
    const wanted = GRADS.filter((_, i) => mask & (1 << i));
    for (const name of GRADS) {
      t[name].requiresGrad = wanted.includes(name);
      t[name].grad = undefined;
    }
    const tape = new Tape(e);
    const y = moeSwiglu(tape, t.x, t.gate, weightsOf(t), SCALE);
    await e.run([...tape.forward(), ...tape.backward(y, dy)]);
    const extra = GRADS.filter((name) => !wanted.includes(name) && t[name].grad);
    if (extra.length) throw new Error(`d${extra} computed though only [${wanted}] asked`);
    const grads = Object.fromEntries(wanted.map((name) => [name, t[name].grad!]));
    await checkRun(e, p, ref, { y, grads }, `[${wanted}] alone`);
    tape.dispose();
    for (const grad of Object.values(grads)) grad.dispose();
  }
  for (const tensor of [...Object.values(t), dy]) tensor.dispose();
});

gpuTest("MoE SwiGLU gradients give the same bits on two runs", async (e) => {
  const p = problem(shapeOf(200, 64, 168, 8, 3), 4, "sparse");
  const { t, dy } = upload(e, p);
  for (const name of GRADS) t[name].requiresGrad = true;
  const tape = new Tape(e);
  const y = moeSwiglu(tape, t.x, t.gate, weightsOf(t), SCALE);
  const step = [...tape.forward(), ...tape.backward(y, dy)];
  const grads = GRADS.map((name) => t[name].grad!);
  const outputs = { y, ...Object.fromEntries(GRADS.map((name, i) => [`d${name}`, grads[i]])) };
  await assertSameBitsTwice(e, step, grads, outputs, "MoE SwiGLU");
  tape.dispose();
  for (const tensor of [...Object.values(t), dy]) tensor.dispose();
});

gpuTest("MoE SwiGLU's forward holds what backward needs, E-fold only for g_j and u_j", (e) => {
  // Per expert: g_j and u_j [E, N, I] (saved), u_g, u_u, u_d [E, N, r]; once: x·W_gᵀ, x·W_uᵀ and
  // the mixture m [N, I], y [N, C]. Buffers are pooled in 256-byte steps. (The texture variant's
  // frozen products also hold their operands packed in textures: the matmul's, not counted here.)
  const shape = shapeOf(64, 40, 96, 8, 3);
  const { rows: n, embd: c, hidden: i, rank: r, experts: ex } = shape;
  const { t } = upload(e, problem(shape, 9, "softmax"));
  const pooled = (floats: number) => Math.ceil((floats * 4) / 256) * 256;
  const expected = 2 * pooled(ex * n * i) + 3 * pooled(ex * n * r) + 3 * pooled(n * i) +
    pooled(n * c);
  const held = e.bytesInUse;
  const tape = new Tape(e);
  moeSwiglu(tape, t.x, t.gate, weightsOf(t), SCALE, { variant: "storage" });
  assertEquals(e.bytesInUse - held, expected, "bytes held by the forward");
  tape.dispose();
  for (const tensor of Object.values(t)) tensor.dispose();
  return Promise.resolve();
});

gpuTest("MoE SwiGLU refuses tensors over the binding limit, saying how many rows fit", (e) => {
  const shape = shapeOf(64, 40, 96, 8, 3);
  const { t } = upload(e, problem(shape, 10, "softmax"));
  const tape = new Tape(e);
  // g_j, u_j: 3·64·96·4 = 73,728 bytes each; 65,536 fit 56 rows (1,152 bytes a row).
  throws(
    () => moeSwiglu(tape, t.x, t.gate, weightsOf(t), SCALE, { maxBindingBytes: 65536 }),
    (err: Error) =>
      err instanceof LimitError &&
      /^moe_swiglu: the experts' saved pre-activations p_gate, p_up \[3,64,96\] take 73728 bytes, .* at most 56 rows/
        .test(err.message),
  );
  tape.dispose();
  for (const tensor of Object.values(t)) tensor.dispose();
  return Promise.resolve();
});

gpuTest("MoE SwiGLU rejects misfit shapes, trainable base weights, too many experts", (e) => {
  const shape = shapeOf(4, 8, 12, 2, 2);
  const { t } = upload(e, problem(shape, 6, "softmax"));
  const tape = new Tape(e);
  moeSwiglu(tape, t.x, t.gate, weightsOf(t), SCALE);
  const wrong: [string, number[]][] = [
    ["gateA", [2, 3, 8]],
    ["gateB", [2, 12, 3]],
    ["upA", [2, 2, 9]],
    ["upB", [2, 11, 2]],
    ["downA", [2, 2, 8]],
    ["downB", [3, 8, 2]],
    ["gateWeight", [12, 9]],
    ["upWeight", [8, 12]],
    ["downWeight", [12, 8]],
    ["gate", [4, 3]],
    ["x", [5, 8]],
  ];
  for (const [name, badShape] of wrong) {
    const bad = e.tensor(badShape, { label: `bad ${name}` });
    const use = (n: string) => n === name ? bad : t[n as keyof typeof t];
    throws(
      () =>
        moeSwiglu(
          tape,
          use("x"),
          use("gate"),
          weightsOf(Object.fromEntries(
            Object.keys(t).map((n) => [n, use(n)]),
          )),
          SCALE,
        ),
      (err: Error) => err instanceof ShapeError && /shapes do not fit together/.test(err.message),
      `bad ${name}`,
    );
    bad.dispose();
  }
  for (const name of FROZEN) {
    t[name].requiresGrad = true;
    throws(
      () => moeSwiglu(tape, t.x, t.gate, weightsOf(t), SCALE),
      new RegExp(`must be frozen, but ${name}`),
    );
    t[name].requiresGrad = false;
  }
  throws(() => moeSwiglu(tape, t.x, t.gate, weightsOf(t), NaN), /scale NaN is not finite/);
  const many = upload(e, problem(shapeOf(2, 4, 4, 1, MAX_EXPERTS + 1), 7, "softmax")).t;
  throws(
    () => moeSwiglu(tape, many.x, many.gate, weightsOf(many), SCALE),
    new RegExp(`${MAX_EXPERTS + 1} experts .*at most ${MAX_EXPERTS}`),
  );
  tape.dispose();
  for (const tensor of [...Object.values(t), ...Object.values(many)]) tensor.dispose();
  return Promise.resolve();
});
