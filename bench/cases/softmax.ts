// Row softmax over vocabulary-sized rows (the reference config's 8192, GPT-2's 50257; 1024 rows
// of 50257 exceed one binding and run in two row chunks), few long rows (one workgroup each)
// and many short rows (a router over 8 experts), forward alone and forward plus backward.
//
// Bytes counted: every tensor once (forward reads x and writes y; backward reads y and dy and
// writes dx), though the kernels read their inputs twice (reduction pass, then output pass).
import { type BenchCase, passes } from "../case.ts";
import { Tape } from "../../engine/tape.ts";
import { softmax } from "../../kernels/softmax.ts";
import { softmaxBackwardRef, softmaxRef } from "../../tests/ref/softmax.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

// As in tests/kernels/softmax_test.ts.
const Y_TOL = { atol: 1e-9, rtol: 1e-5 };
const DX_TOL = { atol: 1e-6, rtol: 1e-5 };

const shapes = [[1024, 8192], [1024, 50257], [4, 50257], [8192, 8]];

/** Values in [lo, hi), drawn from a pool of 2^20 (drawing 51M one by one takes seconds). */
function values(size: number, rng: Rng, lo: number, hi: number): Float32Array {
  const pool = f32(rng.uniform(Math.min(size, 1 << 20), lo, hi));
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) out[i] = pool[(i * 7 + (i >> 13)) % pool.length];
  return out;
}

function softmaxCase([rows, cols]: number[], backward: boolean): BenchCase {
  return {
    kernel: backward ? "softmax_forward_backward" : "softmax_forward",
    variant: "storage",
    shape: { rows, cols },
    setup: (engine) => {
      const rng = new Rng(rows + cols);
      const xs = values(rows * cols, rng, -10, 10);
      const dys = values(rows * cols, rng, -2, 2);
      const x = engine.tensor([rows, cols], { data: xs, label: "x" });
      x.requiresGrad = backward;
      const dy = engine.tensor([rows, cols], { data: dys, label: "dy" });
      const tape = new Tape(engine);
      const y = softmax(tape, x);
      const commands = backward ? [...tape.forward(), ...tape.backward(y, dy)] : tape.forward();
      return Promise.resolve({
        commands,
        check: () =>
          passes(async () => {
            const ref = softmaxRef(xs, cols);
            assertClose(await engine.readF32(y), ref, Y_TOL, "softmax y");
            if (!backward) return;
            const dx = softmaxBackwardRef(ref, dys, cols);
            assertClose(await engine.readF32(x.grad!), dx, DX_TOL, "softmax dx");
          }),
        bytes: (backward ? 5 : 2) * rows * cols * 4,
        dispose: () => {
          tape.dispose();
          x.dispose();
          dy.dispose();
        },
      });
    },
  };
}

export const cases: BenchCase[] = shapes.flatMap((shape) => [
  softmaxCase(shape, false),
  softmaxCase(shape, true),
]);
