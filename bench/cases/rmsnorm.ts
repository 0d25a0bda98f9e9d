// RMSNorm at SmolLM2-135M's hidden size (576, batch 8 × sequence 128) and at GPT-2's 768, forward
// and backward (dx and dw), each checked against the float64 reference first.
import { type BenchCase, passes } from "../case.ts";
import type { Engine } from "../../engine/device.ts";
import { Tape } from "../../engine/tape.ts";
import { rmsNorm } from "../../kernels/rmsnorm.ts";
import { rmsNormBackwardRef, rmsNormRef } from "../../tests/ref/rmsnorm.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

const EPS = 1e-5;
// As in tests/kernels/rmsnorm_test.ts: f32 sums over a row for y and dx; dw sums `rows` terms.
const ROW_TOL = { atol: 5e-6, rtol: 5e-6 };
const columnTol = (rows: number) => ({ atol: 1e-6 + 2e-8 * rows, rtol: 1e-6 });

/** x and weight as leaves requiring gradients, with the norm recorded on a tape. */
function build(engine: Engine, rows: number, cols: number) {
  const rng = new Rng(rows + cols);
  const data = {
    x: f32(rng.normal(rows * cols, 2).map((v) => v + 0.5)),
    weight: f32(rng.uniform(cols, 0.5, 1.5)),
    dy: f32(rng.uniform(rows * cols)),
  };
  const x = engine.tensor([rows, cols], { data: data.x, label: "x" });
  const weight = engine.tensor([cols], { data: data.weight, label: "w" });
  for (const t of [x, weight]) t.requiresGrad = true;
  const dy = engine.tensor([rows, cols], { data: data.dy, label: "dy" });
  const tape = new Tape(engine);
  const y = rmsNorm(tape, x, weight, EPS);
  const dispose = () => {
    tape.dispose();
    for (const t of [x, weight, dy]) t.dispose();
  };
  return { data, x, weight, dy, tape, y, dispose };
}

const shapes = [[1024, 576], [1024, 768]];

const forward: BenchCase[] = shapes.map(([rows, cols]) => ({
  kernel: "rmsnorm_forward",
  variant: "storage",
  shape: { rows, cols },
  setup: (engine) => {
    const { data, y, tape, dispose } = build(engine, rows, cols);
    return Promise.resolve({
      commands: tape.forward(),
      check: () =>
        passes(async () =>
          assertClose(
            await engine.readF32(y),
            rmsNormRef(data.x, data.weight, cols, EPS).y,
            ROW_TOL,
            "y",
          )
        ),
      // Reads x and w; writes y and the saved rstd.
      bytes: 4 * (2 * rows * cols + cols + rows),
      dispose,
    });
  },
}));

const backward: BenchCase[] = shapes.map(([rows, cols]) => ({
  kernel: "rmsnorm_backward",
  variant: "storage",
  shape: { rows, cols },
  setup: async (engine) => {
    const { data, x, weight, dy, y, tape, dispose } = build(engine, rows, cols);
    await engine.run(tape.forward());
    return {
      commands: tape.backward(y, dy),
      check: () =>
        passes(async () => {
          const ref = rmsNormBackwardRef(data.x, data.weight, data.dy, cols, EPS);
          assertClose(await engine.readF32(x.grad!), ref.dx, ROW_TOL, "dx");
          assertClose(await engine.readF32(weight.grad!), ref.dweight, columnTol(rows), "dw");
        }),
      // Reads x, dy, w, rstd (twice: dx and dw); the leaf gradients dx, dw are read and written.
      bytes: 4 * (6 * rows * cols + 2 * rows + 3 * cols),
      dispose,
    };
  },
}));

export const cases: BenchCase[] = [...forward, ...backward];
