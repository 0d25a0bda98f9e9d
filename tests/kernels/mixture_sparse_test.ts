// The mixture's sparse dispatch (kernels/mixture_sparse.ts): each token through its top-k
// experts only. Checked for both families (GPT-2's GELU mixture, moeMlp; Llama's SwiGLU one,
// moeSwiglu) against the float64 references with gates made by topkGate on the device, over
// uneven loads (an expert that serves every token, one that serves none), E up to 8, k = 1 and
// 2, awkward shapes, every gradient overwritten and accumulated, the router's gradient through
// the gate; against the dense dispatch; twice for the same bits; and the one new piece of math,
// the gate gradient of an unselected expert (0), against finite differences of the float64
// reference through the top-k gate.
//
// Tolerances: MIXTURE_TOL (tests/kernels/mixture_inputs.ts), relative to each tensor's largest
// reference value, as for the dense dispatch: the same f32 chains, summed in another order. The
// router's gradient mixes at most k gate gradients with weights summing to at most 2 (topk_gate.ts),
// so its slack is twice MIXTURE_TOL times the gate gradients' largest.
import { throws } from "node:assert/strict";
import type { Engine } from "../../engine/device.ts";
import { LimitError, ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { type MixtureOptions, SPARSE_MIN_ROWS } from "../../kernels/mixture.ts";
import { moeMlp } from "../../kernels/moe_mlp.ts";
import { moeSwiglu } from "../../kernels/moe_swiglu.ts";
import { topkGate } from "../../kernels/topk_gate.ts";
import type { KernelVariant } from "../../kernels/variant.ts";
import { assertEquals } from "../assert.ts";
import type { MixtureShape } from "../ref/mixture.ts";
import { moeMlpBackwardRef, type MoeMlpInputs, moeMlpRef } from "../ref/moe_mlp.ts";
import { moeSwigluBackwardRef, type MoeSwigluInputs, moeSwigluRef } from "../ref/moe_swiglu.ts";
import { topkGateBackwardRef, topkGateRef } from "../ref/topk_gate.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, probe, Rng } from "../util.ts";
import { assertSameBitsTwice, MIXTURE_TOL, mixtureTolerance } from "./mixture_inputs.ts";
import * as gelu from "./moe_mlp_problem.ts";
import * as swiglu from "./moe_swiglu_problem.ts";

const SCALE = 16 / Math.sqrt(8); // rsLoRA's alpha/√r at alpha 16, r 8

type Values = Record<string, Float64Array>;

/** One family of the mixture as these tests drive it. */
interface Family {
  name: string;
  /** The differentiable inputs in the op's order: x, gate, then the experts' LoRA tensors. */
  grads: readonly string[];
  /** Inputs (their gate is replaced by a top-k gate) and dy. */
  problem(shape: MixtureShape, seed: number): { values: Values; dy: Float64Array };
  upload(engine: Engine, shape: MixtureShape, values: Values): Record<string, Tensor>;
  run(tape: Tape, x: Tensor, gate: Tensor, t: Record<string, Tensor>, o: MixtureOptions): Tensor;
  ref(shape: MixtureShape, values: Values): Float64Array;
  backwardRef(shape: MixtureShape, values: Values, dy: Float64Array): Values;
}

const FAMILIES: Family[] = [
  {
    name: "GELU",
    grads: gelu.GRADS,
    problem: (shape, seed) => {
      const { dy, ...values } = gelu.inputs(shape, seed, "softmax");
      return { values: values as Values, dy };
    },
    upload: (engine, shape, values) =>
      gelu.upload(engine, shape, values as unknown as MoeMlpInputs),
    run: (tape, x, gate, t, o) => moeMlp(tape, x, gate, gelu.weightsOf(t), SCALE, o),
    ref: (shape, values) => moeMlpRef(shape, values as unknown as MoeMlpInputs, SCALE),
    backwardRef: (shape, values, dy) =>
      moeMlpBackwardRef(shape, values as unknown as MoeMlpInputs, SCALE, dy) as unknown as Values,
  },
  {
    name: "SwiGLU",
    grads: swiglu.GRADS,
    problem: (shape, seed) => {
      const p = swiglu.problem(shape, seed, "softmax");
      return { values: p.values as unknown as Values, dy: p.dy };
    },
    upload: (engine, shape, values) => {
      const dy = new Float64Array(shape.rows * shape.embd);
      const p = { shape, values: values as unknown as MoeSwigluInputs, dy, checked: [] };
      const { t, dy: dyTensor } = swiglu.upload(engine, p);
      dyTensor.dispose();
      return t;
    },
    run: (tape, x, gate, t, o) => moeSwiglu(tape, x, gate, swiglu.weightsOf(t), SCALE, o),
    ref: (shape, values) => moeSwigluRef(shape, values as unknown as MoeSwigluInputs, SCALE),
    backwardRef: (shape, values, dy) =>
      moeSwigluBackwardRef(
        shape,
        values as unknown as MoeSwigluInputs,
        SCALE,
        dy,
      ) as unknown as Values,
  },
];

/**
 * How tokens spread over the experts: `random`, router logits ~ N(0, 2²); `uneven`, the same with
 * expert 0 set 0.5 above every other for every token (it serves them all) and the last expert
 * 0.5 below every other (it serves none when k < E); margins small enough that every selected
 * expert keeps a sizable gate.
 */
type Load = "random" | "uneven";

function routerLogits(rng: Rng, rows: number, experts: number, load: Load): Float64Array {
  const logits = rng.normal(rows * experts, 2);
  if (load === "uneven") {
    for (let n = 0; n < rows; n++) {
      const row = logits.subarray(n * experts, (n + 1) * experts);
      const middle = [...row.subarray(1, experts - 1)];
      if (middle.length > 0) row[0] = Math.max(...middle) + 0.5;
      row[experts - 1] = Math.min(row[0], ...middle) - 0.5;
    }
  }
  return f32(logits);
}

/** The gate gradient the sparse dispatch gives: the reference's where the gate selects, else 0. */
function selectedOnly(dgate: Float64Array, gate: ArrayLike<number>): Float64Array {
  return dgate.map((v, i) => gate[i] !== 0 ? v : 0);
}

/** How many tokens each expert serves under `gate` [N, E]. */
function loads(gate: ArrayLike<number>, experts: number): number[] {
  const counts = new Array(experts).fill(0);
  for (let i = 0; i < gate.length; i++) if (gate[i] !== 0) counts[i % experts]++;
  return counts;
}

/**
 * A copy of x, recorded between the top-k gate and the op under test so that the gradients that
 * op overwrites for x and for the gate can be read: it takes x (needing no gradient) and the gate
 * as inputs and adds nothing to either. Its backward runs after the op's, handed the op's dx (its
 * output's gradient) and the gate's gradient tensor the op wrote first; `grads` gives both.
 */
function gradTap(tape: Tape, x: Tensor, gate: Tensor) {
  const y = tape.tensor(x.shape, `tap(${x.label})`);
  let grads: { x: Tensor; gate: Tensor } | undefined;
  tape.record({
    name: "tap",
    inputs: [x, gate],
    outputs: [y],
    forward: [{ kind: "copy", label: "tap", src: x, dst: y }],
    backward: (ctx) => {
      grads = { x: ctx.gradOutput(0), gate: ctx.gradInput(1)!.tensor };
      return [];
    },
  });
  return { y, grads: () => grads! };
}

const describe = (s: MixtureShape, k: number) =>
  `N=${s.rows} C=${s.embd} H=${s.hidden} r=${s.rank} E=${s.experts} k=${k}`;

const routerTol = (dgate: ArrayLike<number>) => {
  const { atol } = mixtureTolerance(dgate);
  return { atol: 2 * atol, rtol: MIXTURE_TOL };
};

/**
 * Sparse dispatch against the reference: forward; backward into intermediates (x, the gate and
 * every LoRA gradient overwritten, garbage there first; the gate's 0 where it selects nothing)
 * with the router's gradient through the top-k gate; backward into leaves whose gradients hold
 * values, the gate a leaf too (every gradient accumulated; nothing added where the gate selects
 * nothing).
 */
async function checkSparse(
  engine: Engine,
  family: Family,
  shape: MixtureShape,
  k: number,
  load: Load,
  variant?: KernelVariant,
): Promise<void> {
  const { rows, embd, experts } = shape;
  const what = `${family.name} sparse ${describe(shape, k)} ${load} ${variant ?? ""}`;
  const seed = rows + embd + shape.hidden + shape.rank + experts + k;
  const { values, dy: dyValues } = family.problem(shape, seed);
  const logitValues = routerLogits(new Rng(seed + 1), rows, experts, load);
  const t = family.upload(engine, shape, values);
  const logits = engine.tensor([rows, experts], { data: logitValues, label: "logits" });
  logits.requiresGrad = true;
  const dy = engine.tensor([rows, embd], { data: dyValues, label: "dy" });
  const opts: MixtureOptions = { dispatch: "sparse", variant };
  const lora = family.grads.slice(2);

  const tape = new Tape(engine);
  const probes = Object.fromEntries(lora.map((name) => [name, probe(tape, t[name])]));
  const probed = Object.fromEntries(Object.entries(probes).map(([name, p]) => [name, p.y]));
  const gate = topkGate(tape, logits, k);
  const tap = gradTap(tape, t.x, gate);
  const y = family.run(tape, tap.y, gate, { ...t, ...probed }, opts);
  const backward = tape.backward(y, dy);
  const overwritten: Record<string, Tensor> = {
    ...Object.fromEntries(Object.entries(probes).map(([name, p]) => [name, p.grad()])),
    ...tap.grads(),
  };
  for (const grad of Object.values(overwritten)) {
    engine.write(grad, new Float32Array(grad.size).fill(1e30));
  }
  await engine.run(tape.forward());
  const gateValues = f32(await engine.readF32(gate));
  const served = loads(gateValues, experts);
  if (load === "uneven" && (served[0] !== rows || (k < experts && served[experts - 1] !== 0))) {
    throw new Error(`${what}: the loads ${served} are not the uneven ones meant`);
  }
  const v = { ...values, gate: gateValues };
  const yRef = family.ref(shape, v);
  const ref = family.backwardRef(shape, v, dyValues);
  await engine.run(backward);
  assertClose(await engine.readF32(y), yRef, mixtureTolerance(yRef), `${what} forward`);
  for (const [name, grad] of Object.entries(overwritten)) {
    const expected = name === "gate" ? selectedOnly(ref.gate, gateValues) : ref[name];
    const got = await engine.readF32(grad);
    assertClose(got, expected, mixtureTolerance(expected), `${what} d${name} (overwrite)`);
  }
  const dlogitsRef = topkGateBackwardRef(logitValues, ref.gate, experts, k);
  assertClose(
    await engine.readF32(logits.grad!),
    dlogitsRef,
    routerTol(selectedOnly(ref.gate, gateValues)),
    `${what} router's dlogits`,
  );

  const leafTape = new Tape(engine);
  const leaves: Record<string, Tensor> = { ...t, gate };
  const before = Object.fromEntries(family.grads.map((name, i) => {
    const leaf = leaves[name];
    const prior = f32(new Rng(i).uniform(leaf.size));
    leaf.requiresGrad = true;
    leaf.grad = engine.tensor(leaf.shape, { data: prior, label: `grad ${name}` });
    return [name, prior];
  }));
  const leafY = family.run(leafTape, t.x, gate, t, opts);
  await engine.run([...leafTape.forward(), ...leafTape.backward(leafY, dy)]);
  for (const name of family.grads) {
    const share = name === "gate" ? selectedOnly(ref.gate, gateValues) : ref[name];
    const expected = before[name].map((prior, j) => prior + share[j]);
    const got = await engine.readF32(leaves[name].grad!);
    assertClose(got, expected, mixtureTolerance(expected), `${what} d${name} (accumulate)`);
  }
  tape.dispose();
  leafTape.dispose();
  for (const tensor of [...Object.values(leaves), logits, dy]) tensor.dispose();
}

// Awkward shapes (N past one 64-row block and not a multiple of any row tile; C, H not multiples
// of 4; H whose column groups do not tile evenly; r ∈ {1, 3, 4, 12}), E from 2 to 8, k = 1 and 2,
// each with random and uneven loads (an expert with every token: 65 and 130 rows run two and
// three row blocks of the weight gradients; an expert with none).
const awkward: [MixtureShape, number][] = [
  [{ rows: 17, embd: 12, hidden: 20, rank: 3, experts: 3 }, 1],
  [{ rows: 70, embd: 7, hidden: 30, rank: 1, experts: 4 }, 2],
  [{ rows: 65, embd: 16, hidden: 36, rank: 4, experts: 8 }, 1],
  [{ rows: 130, embd: 13, hidden: 44, rank: 12, experts: 8 }, 2],
  [{ rows: 9, embd: 8, hidden: 12, rank: 2, experts: 5 }, 2],
  [{ rows: 1, embd: 1, hidden: 1, rank: 1, experts: 2 }, 1],
];
for (const family of FAMILIES) {
  for (const [shape, k] of awkward) {
    for (const load of ["random", "uneven"] as const) {
      gpuTest(
        `${family.name} sparse dispatch matches the reference, overwrite and accumulate, ` +
          `router included (${describe(shape, k)}, ${load} loads)`,
        (engine) => checkSparse(engine, family, shape, k, load),
      );
    }
  }
  // The frozen products in both kernel families (kernels/variant.ts); the routed kernels are
  // the same in both.
  for (const variant of ["texture", "storage"] as const) {
    gpuTest(
      `${family.name} sparse dispatch matches the reference (${variant} frozen products)`,
      (engine) =>
        checkSparse(
          engine,
          family,
          { rows: 67, embd: 20, hidden: 40, rank: 8, experts: 6 },
          2,
          "random",
          variant,
        ),
    );
  }
}

Deno.test("an unselected expert's gate gradient of 0 keeps the router's gradient exact (float64, FD)", () => {
  for (const family of FAMILIES) {
    for (const k of [1, 2]) {
      const shape = { rows: 4, embd: 5, hidden: 6, rank: 2, experts: 4 };
      const { values, dy } = family.problem(shape, 11 + k);
      const logits = new Rng(12 + k).normal(shape.rows * shape.experts, 2);
      const loss = (l: Float64Array) =>
        dot(family.ref(shape, { ...values, gate: topkGateRef(l, shape.experts, k) }), dy);
      const gate = topkGateRef(logits, shape.experts, k);
      const full = family.backwardRef(shape, { ...values, gate }, dy).gate;
      const sparse = selectedOnly(full, gate);
      // Not vacuous: the dense gradient of unselected gates is far from 0.
      const dropped = full.filter((_, i) => gate[i] === 0);
      if (!dropped.some((v) => Math.abs(v) > 1e-3)) throw new Error("no unselected gradient");
      const analytic = topkGateBackwardRef(logits, sparse, shape.experts, k);
      assertGradMatchesFD(loss, logits, analytic, `${family.name} k=${k} dlogits`, { count: 16 });
    }
  }
});

/**
 * One training step's y and gradients (x, every LoRA tensor, the router's logits), and how many
 * dispatches its backward took.
 */
async function step(
  engine: Engine,
  family: Family,
  shape: MixtureShape,
  k: number,
  load: Load,
  opts: MixtureOptions & { dispatch: "dense" | "sparse" },
): Promise<{ values: Record<string, Float32Array>; backwardDispatches: number }> {
  const { rows, embd, experts } = shape;
  const seed = rows + experts + k;
  const { values, dy: dyValues } = family.problem(shape, seed);
  const t = family.upload(engine, shape, values);
  const logits = engine.tensor([rows, experts], {
    data: routerLogits(new Rng(seed + 1), rows, experts, load),
    label: "logits",
  });
  const dy = engine.tensor([rows, embd], { data: dyValues, label: "dy" });
  const leaves: Record<string, Tensor> = { ...t, logits };
  const trained = ["x", ...family.grads.slice(2), "logits"];
  for (const name of trained) leaves[name].requiresGrad = true;
  const tape = new Tape(engine);
  const y = family.run(tape, t.x, topkGate(tape, logits, k), t, opts);
  const backward = tape.backward(y, dy);
  await engine.run([...tape.forward(), ...backward]);
  const out: Record<string, Float32Array> = { y: await engine.readF32(y) };
  for (const name of trained) out[`d${name}`] = await engine.readF32(leaves[name].grad!);
  tape.dispose();
  for (const tensor of [...Object.values(leaves), dy]) tensor.dispose();
  return { values: out, backwardDispatches: backward.length };
}

// The shipped base model's MLP (C 128, H 512) and the Llama base's (C 128, I 344) at the
// training batch (8 × 128 tokens), E = 8: the dense dispatch is the reference here (it is
// checked against float64 at this size in moe_mlp_test.ts; the float64 reference of eight
// experts over 1024 rows would take minutes).
for (const family of FAMILIES) {
  const hidden = family.name === "GELU" ? 512 : 344;
  for (const [k, load] of [[2, "random"], [1, "uneven"]] as const) {
    const shape = { rows: 1024, embd: 128, hidden, rank: 8, experts: 8 };
    gpuTest(
      `${family.name} sparse dispatch equals dense at the base model's size ` +
        `(${describe(shape, k)}, ${load} loads)`,
      async (engine) => {
        const dense = (await step(engine, family, shape, k, load, { dispatch: "dense" })).values;
        const sparse = (await step(engine, family, shape, k, load, { dispatch: "sparse" })).values;
        for (const name of Object.keys(dense)) {
          assertClose(sparse[name], dense[name], mixtureTolerance(dense[name]), name);
        }
      },
    );
  }
}

// A browser's WebGPU may bind fewer storage buffers in a shader stage than Deno's (Chromium's
// SwiftShader adapter 10, WebGPU's default 8): the SwiGLU mixture's fused backward kernel binds 11
// (dense) or 10 (sparse), so under 9 it runs as one pass per branch, with the fused kernel's bits.
for (const dispatch of ["dense", "sparse"] as const) {
  gpuTest(
    `SwiGLU backward split to 9 storage buffers gives the fused bits (${dispatch})`,
    async (e) => {
      const shape = { rows: 37, embd: 12, hidden: 20, rank: 3, experts: 3 };
      const swiglu = FAMILIES.find((f) => f.name === "SwiGLU")!;
      const fused = await step(e, swiglu, shape, 2, "random", { dispatch });
      const split = await step(e, swiglu, shape, 2, "random", { dispatch, maxStorageBuffers: 9 });
      assertEquals(split.backwardDispatches, fused.backwardDispatches + 1, "one pass per branch");
      for (const [name, values] of Object.entries(fused.values)) {
        assertEquals(
          new Uint32Array(split.values[name].buffer),
          new Uint32Array(values.buffer),
          name,
        );
      }
    },
  );
}

for (const family of FAMILIES) {
  gpuTest(`${family.name} sparse dispatch gives the same bits on two runs`, async (e) => {
    const shape = { rows: 200, embd: 64, hidden: 168, rank: 8, experts: 8 };
    const { values, dy: dyValues } = family.problem(shape, 4);
    const t = family.upload(e, shape, values);
    const logits = e.tensor([200, 8], {
      data: routerLogits(new Rng(5), 200, 8, "random"),
      label: "logits",
    });
    const dy = e.tensor([200, 64], { data: dyValues, label: "dy" });
    const leaves: Record<string, Tensor> = { ...t, logits };
    const trained = ["x", ...family.grads.slice(2), "logits"];
    for (const name of trained) leaves[name].requiresGrad = true;
    const tape = new Tape(e);
    const y = family.run(tape, t.x, topkGate(tape, logits, 2), t, { dispatch: "sparse" });
    const steps = [...tape.forward(), ...tape.backward(y, dy)];
    const grads = trained.map((name) => leaves[name].grad!);
    const outputs = { y, ...Object.fromEntries(trained.map((name, i) => [`d${name}`, grads[i]])) };
    await assertSameBitsTwice(e, steps, grads, outputs, `${family.name} sparse`);
    tape.dispose();
    for (const tensor of [...Object.values(leaves), dy]) tensor.dispose();
  });
}

/** The top-k gate of random logits, made on its own tape (kept alive by the caller). */
function topkGateOf(e: Engine, rows: number, experts: number, k: number) {
  const logits = e.tensor([rows, experts], {
    data: routerLogits(new Rng(rows), rows, experts, "random"),
    label: "logits",
  });
  const tape = new Tape(e);
  const gate = topkGate(tape, logits, k);
  return {
    gate,
    fill: () => e.run(tape.forward()),
    dispose: () => (tape.dispose(), logits.dispose()),
  };
}

gpuTest("sparse dispatch holds k·N rows per expert tensor, not E·N", async (e) => {
  // Per slot (S = k·N rows): u_gate, u_up, u_down [S, r]; p_gate, p_up [S, I] (saved); z [S, C].
  // Per token: x·W_gᵀ, x·W_uᵀ, the mixture m [N, I], y [N, C]; and the route (u32). Buffers are
  // pooled in 256-byte steps; the storage variant's frozen products hold no textures.
  const shape = { rows: 64, embd: 40, hidden: 96, rank: 8, experts: 8 };
  const k = 2, { rows: n, embd: c, hidden: i, rank: r, experts: ex } = shape;
  const s = k * n;
  const t = FAMILIES[1].upload(e, shape, FAMILIES[1].problem(shape, 9).values);
  const { gate, fill, dispose } = topkGateOf(e, n, ex, k);
  await fill();
  const pooled = (words: number) => Math.ceil((words * 4) / 256) * 256;
  const route = 2 * ex + s + 2 * n * k;
  const expected = 3 * pooled(s * r) + 2 * pooled(s * i) + pooled(s * c) + 3 * pooled(n * i) +
    pooled(n * c) + pooled(route);
  const held = e.bytesInUse;
  const tape = new Tape(e);
  FAMILIES[1].run(tape, t.x, gate, t, { variant: "storage", dispatch: "sparse" });
  assertEquals(e.bytesInUse - held, expected, "bytes held by the sparse forward");
  tape.dispose();
  dispose();
  for (const tensor of Object.values(t)) tensor.dispose();
});

gpuTest("sparse dispatch fits a binding limit that the dense [E, N, H] would not", async (e) => {
  // p_f: dense 8·64·96·4 = 196,608 bytes, sparse (k = 2) 2·64·96·4 = 49,152; the limit 65,536.
  const shape = { rows: 64, embd: 40, hidden: 96, rank: 8, experts: 8 };
  const t = FAMILIES[0].upload(e, shape, FAMILIES[0].problem(shape, 10).values);
  const { gate, fill, dispose } = topkGateOf(e, 64, 8, 2);
  await fill();
  const tape = new Tape(e);
  const limited = { maxBindingBytes: 65536 };
  throws(
    () => FAMILIES[0].run(tape, t.x, gate, t, { ...limited, dispatch: "dense" }),
    (err: Error) => err instanceof LimitError && /\[8,64,96\] take 196608 bytes/.test(err.message),
  );
  const y = FAMILIES[0].run(tape, t.x, gate, t, { ...limited, dispatch: "sparse" });
  const unlimited = FAMILIES[0].run(tape, t.x, gate, t, { dispatch: "sparse" });
  await e.run(tape.forward());
  assertEquals([...await e.readF32(y)], [...await e.readF32(unlimited)], "y within the limit");
  tape.dispose();
  dispose();
  for (const tensor of Object.values(t)) tensor.dispose();
});

gpuTest("the dispatch: auto takes sparse for a top-k gate with k < E; sparse needs one", (e) => {
  const shape = { rows: 64, embd: 8, hidden: 12, rank: 2, experts: 4 };
  const t = FAMILIES[0].upload(e, shape, FAMILIES[0].problem(shape, 11).values);
  const routed = (gate: Tensor, o: MixtureOptions) => {
    const tape = new Tape(e);
    FAMILIES[0].run(tape, t.x, gate, t, o);
    const labels = tape.forward().map((command) => command.label);
    tape.dispose();
    return labels.some((label) => label.includes("(routed)"));
  };
  const top2 = topkGateOf(e, 64, 4, 2), top4 = topkGateOf(e, 64, 4, 4);
  assertEquals(routed(top2.gate, {}), true, "auto, k = 2 < E = 4");
  assertEquals(routed(top2.gate, { dispatch: "dense" }), false, "dense asked");
  assertEquals(routed(top4.gate, {}), false, "auto, k = E");
  assertEquals(routed(t.gate, {}), false, "auto, a gate not made by topkGate");
  throws(
    () => routed(t.gate, { dispatch: "sparse" }),
    (err: Error) =>
      err instanceof ShapeError &&
      /sparse dispatch needs a gate made by topkGate/.test(err.message),
  );
  top2.dispose();
  top4.dispose();
  for (const tensor of Object.values(t)) tensor.dispose();
  // Below SPARSE_MIN_ROWS rows the route costs more than it saves: auto stays dense.
  const few = { ...shape, rows: SPARSE_MIN_ROWS - 1 };
  const s = FAMILIES[0].upload(e, few, FAMILIES[0].problem(few, 12).values);
  const fewTop2 = topkGateOf(e, few.rows, 4, 2);
  const tape = new Tape(e);
  FAMILIES[0].run(tape, s.x, fewTop2.gate, s, {});
  assertEquals(
    tape.forward().some((command) => command.label.includes("(routed)")),
    false,
    `auto, ${few.rows} rows`,
  );
  tape.dispose();
  fewTop2.dispose();
  for (const tensor of Object.values(s)) tensor.dispose();
  return Promise.resolve();
});
