// Reductions at GPT-2 sizes: bias gradients (column sums over B·T = 1024 rows) and a mean over
// a [1024, 768] activation. Memory-bound: reported in GB/s of input read.
import type { BenchCase } from "../case.ts";
import { Tape } from "../../engine/tape.ts";
import { mean, sumRows } from "../../kernels/sum.ts";
import { meanRef, sumRowsRef } from "../../tests/ref/sum.ts";
import { Rng } from "../../tests/util.ts";

/** f32 sums of R terms: |error| ≲ u·√R·Σ|x| (see tests/kernels/sum_test.ts), 4× margin. */
const ERROR_FACTOR = 4 * 2 ** -24;

function withinBound(got: number, ref: number, scale: number, terms: number): boolean {
  return Math.abs(got - ref) <= ERROR_FACTOR * Math.sqrt(terms) * scale;
}

const shapes: { kernel: "sum_rows" | "mean"; rows: number; cols: number }[] = [
  { kernel: "sum_rows", rows: 1024, cols: 768 },
  { kernel: "sum_rows", rows: 1024, cols: 3072 },
  { kernel: "mean", rows: 1024, cols: 768 },
];

export const cases: BenchCase[] = shapes.map(({ kernel, rows, cols }) => ({
  kernel,
  variant: "storage",
  shape: { rows, cols },
  setup: (engine) => {
    const rng = new Rng(rows + cols);
    const values = Float32Array.from({ length: rows * cols }, () => rng.next() - 0.5);
    const abs = values.map(Math.abs);
    const tape = new Tape(engine);
    const x = engine.tensor([rows, cols], { data: values, label: "x" });
    const y = kernel === "sum_rows" ? sumRows(tape, x) : mean(tape, x);
    return Promise.resolve({
      commands: tape.forward(),
      check: async () => {
        const got = await engine.readF32(y);
        if (kernel === "mean") {
          return withinBound(got[0], meanRef(values), meanRef(abs), rows * cols);
        }
        const ref = sumRowsRef(values, cols), scale = sumRowsRef(abs, cols);
        return ref.every((r, i) => withinBound(got[i], r, scale[i], rows));
      },
      bytes: rows * cols * 4,
      dispose: () => {
        tape.dispose();
        x.dispose();
      },
    });
  },
}));
