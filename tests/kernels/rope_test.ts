import { add } from "../../kernels/add.ts";
import { rope, ropeTable } from "../../kernels/rope.ts";
import { ropeInverseFrequencies } from "../../kernels/rope_frequencies.ts";
import type { Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import { Tape } from "../../engine/tape.ts";
import { ropeBackwardRef, ropeRef, type RopeShape } from "../ref/rope.ts";
import { addRef } from "../ref/add.ts";
import { assertEquals, assertThrows } from "../assert.ts";
import { assertClose, assertGradMatchesFD, dot, f32, gpuTest, leaf, Rng } from "../util.ts";

// Each output is x₁·c ∓ x₂·s in f32, with c and s rounded once from float64: a few ulps of
// |x| ≤ 8 (measured ≤ 5.8e-7 on y, 1.5e-7 on dx); about 2× headroom.
const TOL = { atol: 1e-6, rtol: 1e-6 };

Deno.test("rope reference gradient matches finite differences", () => {
  const s = { B: 2, T: 5, heads: 3, D: 6 };
  const frequencies = ropeInverseFrequencies(s.D, 10000);
  const rng = new Rng(3);
  const x = rng.normal(s.B * s.T * s.heads * s.D);
  const dy = rng.uniform(x.length);
  assertGradMatchesFD(
    (v) => dot(ropeRef(v, frequencies, s), dy),
    x,
    ropeBackwardRef(dy, frequencies, s),
    "rope dx",
    { count: x.length },
  );
});

interface Case extends RopeShape {
  theta?: number;
  /** Positions in the table (≥ T). */
  positions?: number;
  llama3?: boolean;
  maxBindingBytes?: number;
}

/** Forward and accumulated backward against the float64 reference. */
async function check(engine: Engine, c: Case) {
  const frequencies = ropeInverseFrequencies(
    c.D,
    c.theta ?? 10000,
    c.llama3
      ? {
        rope_type: "llama3",
        factor: 32,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 64,
      }
      : null,
  );
  const shape = [c.B, c.T, c.heads * c.D];
  const n = c.B * c.T * c.heads * c.D;
  const rng = new Rng(n + c.T);
  const xs = f32(rng.normal(n, 1.5)), dys = f32(rng.uniform(n)), before = f32(rng.uniform(n));
  const x = leaf(engine, shape, xs, "x");
  x.grad = engine.tensor(shape, { data: before });
  const dy = engine.tensor(shape, { data: dys, label: "dy" });
  const table = ropeTable(engine, frequencies, c.positions ?? c.T);
  const tape = new Tape(engine);
  const y = rope(tape, x, table, { maxBindingBytes: c.maxBindingBytes });
  await engine.run([...tape.forward(), ...tape.backward(y, dy)]);
  assertClose(await engine.readF32(y), ropeRef(xs, frequencies, c), TOL, "rope y");
  const dx = addRef(before, ropeBackwardRef(dys, frequencies, c));
  assertClose(await engine.readF32(x.grad), dx, TOL, "rope dx (accumulated)");
  tape.dispose();
  for (const t of [x, dy, table]) t.dispose();
}

const cases: Case[] = [
  { B: 1, T: 1, heads: 1, D: 2 }, // one pair at position 0: the identity
  { B: 2, T: 3, heads: 2, D: 6 }, // halves of 3: scalar loads
  { B: 2, T: 17, heads: 3, D: 10 },
  { B: 3, T: 33, heads: 2, D: 8 }, // halves of one vec4
  { B: 1, T: 65, heads: 9, D: 64, theta: 100000 },
  { B: 2, T: 33, heads: 3, D: 12, positions: 200 }, // a table longer than the sequence
  { B: 2, T: 127, heads: 2, D: 64, theta: 500000, llama3: true },
  { B: 1, T: 1000, heads: 1, D: 16 }, // angles up to 1000 rad
  { B: 8, T: 128, heads: 9, D: 64 }, // SmolLM2-135M's queries
  { B: 8, T: 128, heads: 3, D: 64 }, // and keys
];
for (const c of cases) {
  gpuTest(
    `rope forward and accumulated backward match float64 (${JSON.stringify(c)})`,
    (e) => check(e, c),
  );
}

// Chunks of whole rows whose positions continue across the split (row r is position r mod T).
for (
  const c of [{ B: 3, T: 37, heads: 2, D: 8, maxBindingBytes: 64 * 64 }, {
    B: 2,
    T: 50,
    heads: 3,
    D: 6,
    maxBindingBytes: 4096,
  }]
) {
  gpuTest(`rope split into row chunks matches float64 (${JSON.stringify(c)})`, (e) => check(e, c));
}

gpuTest("rope overwrites the gradient of an intermediate input", async (engine) => {
  // x is an add's output consumed only by rope: two backward runs give the leaf exactly 2×.
  const s = { B: 2, T: 9, heads: 3, D: 8 };
  const shape = [s.B, s.T, s.heads * s.D];
  const n = s.B * s.T * s.heads * s.D;
  const rng = new Rng(4);
  const xs = f32(rng.normal(n)), dys = f32(rng.uniform(n));
  const frequencies = ropeInverseFrequencies(s.D, 10000);
  const x0 = leaf(engine, shape, xs, "x0");
  const zeros = engine.tensor(shape);
  const dy = engine.tensor(shape, { data: dys, label: "dy" });
  const table = ropeTable(engine, frequencies, s.T);
  const tape = new Tape(engine);
  const y = rope(tape, add(tape, x0, zeros), table);
  await engine.run(tape.forward());
  const backward = tape.backward(y, dy);
  await engine.run(backward);
  await engine.run(backward);
  const twice = ropeBackwardRef(dys, frequencies, s).map((g) => 2 * g);
  assertClose(await engine.readF32(x0.grad!), twice, TOL, "dx (overwritten twice)");
  tape.dispose();
  for (const t of [x0, zeros, dy, table]) t.dispose();
});

gpuTest("rope rejects tables that do not fit its input", (engine) => {
  const tape = new Tape(engine);
  const x = engine.tensor([2, 5, 12]);
  const tables = [engine.tensor([5, 5]), engine.tensor([5, 8]), engine.tensor([4, 6])];
  assertThrows(() => rope(tape, x, tables[0]), ShapeError, "even D dividing 12");
  assertThrows(() => rope(tape, x, tables[1]), ShapeError, "even D dividing 12");
  assertThrows(() => rope(tape, x, tables[2]), ShapeError, "covers 4 positions");
  assertThrows(() => rope(tape, tape.reshape(x, [10, 12]), tables[2]), ShapeError, "[B, T");
  assertEquals(tape.forward().length, 0, "nothing recorded");
  tape.dispose();
  for (const t of [x, ...tables]) t.dispose();
  return Promise.resolve();
});
