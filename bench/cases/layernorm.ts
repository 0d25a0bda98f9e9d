import { type BenchCase, passes } from "../case.ts";
import { layerNorm } from "../../kernels/layernorm.ts";
import { Tape } from "../../engine/tape.ts";
import { layerNormBackwardRef, layerNormRef } from "../../tests/ref/layernorm.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

const EPS = 1e-5;
// As in tests/kernels/layernorm_test.ts: f32 sums over a row for y and dx; dw and db sum `rows`
// terms of order 1, whose rounding error grows with the number of terms.
const ROW_TOL = { atol: 5e-6, rtol: 5e-6 };
const columnTol = (rows: number) => ({ atol: 1e-6 + 2e-8 * rows, rtol: 1e-6 });

/** x, weight and bias as leaves requiring gradients, with the layer norm recorded on a tape. */
function build(engine: Parameters<BenchCase["setup"]>[0], rows: number, cols: number) {
  const rng = new Rng(rows + cols);
  const data = {
    x: f32(rng.normal(rows * cols, 2).map((v) => v + 0.5)),
    weight: f32(rng.uniform(cols, 0.5, 1.5)),
    bias: f32(rng.uniform(cols)),
    dy: f32(rng.uniform(rows * cols)),
  };
  const x = engine.tensor([rows, cols], { data: data.x, label: "x" });
  const weight = engine.tensor([cols], { data: data.weight, label: "w" });
  const bias = engine.tensor([cols], { data: data.bias, label: "b" });
  for (const t of [x, weight, bias]) t.requiresGrad = true;
  const dy = engine.tensor([rows, cols], { data: data.dy, label: "dy" });
  const tape = new Tape(engine);
  const y = layerNorm(tape, x, weight, bias, EPS);
  const dispose = () => {
    tape.dispose();
    for (const t of [x, weight, bias, dy]) t.dispose();
  };
  return { data, x, weight, bias, dy, tape, y, dispose };
}

const shapes = [[1024, 768], [1024, 256]];

const forward: BenchCase[] = shapes.map(([rows, cols]) => ({
  kernel: "layernorm_forward",
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
            layerNormRef(data.x, data.weight, data.bias, cols, EPS).y,
            ROW_TOL,
            "y",
          )
        ),
      // Reads x, w, b; writes y and the saved mean and rstd.
      bytes: 4 * (2 * rows * cols + 2 * cols + 2 * rows),
      dispose,
    });
  },
}));

const backward: BenchCase[] = shapes.map(([rows, cols]) => ({
  kernel: "layernorm_backward",
  variant: "storage",
  shape: { rows, cols },
  setup: async (engine) => {
    const { data, x, weight, bias, dy, y, tape, dispose } = build(engine, rows, cols);
    await engine.run(tape.forward());
    return {
      commands: tape.backward(y, dy),
      check: () =>
        passes(async () => {
          const ref = layerNormBackwardRef(data.x, data.weight, data.dy, cols, EPS);
          assertClose(await engine.readF32(x.grad!), ref.dx, ROW_TOL, "dx");
          assertClose(await engine.readF32(weight.grad!), ref.dweight, columnTol(rows), "dw");
          assertClose(await engine.readF32(bias.grad!), ref.dbias, columnTol(rows), "db");
        }),
      // Reads x, dy, w, mean, rstd; the leaf gradients dx, dw, db are read and written (+=).
      bytes: 4 * (4 * rows * cols + 2 * rows + 5 * cols),
      dispose,
    };
  },
}));

export const cases: BenchCase[] = [...forward, ...backward];
