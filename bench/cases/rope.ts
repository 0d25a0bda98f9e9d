// Rotary embeddings on SmolLM2-135M's queries and keys (9 and 3 heads of 64, batch 8 ×
// sequence 128), forward and backward, checked against the float64 reference.
import { type BenchCase, passes } from "../case.ts";
import { Tape } from "../../engine/tape.ts";
import { rope, ropeTable } from "../../kernels/rope.ts";
import { ropeInverseFrequencies } from "../../kernels/rope_frequencies.ts";
import { ropeBackwardRef, ropeRef } from "../../tests/ref/rope.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

// As in tests/kernels/rope_test.ts: x₁·c ∓ x₂·s in f32, c and s rounded once.
const TOL = { atol: 1e-6, rtol: 1e-6 };

function ropeCase(B: number, T: number, heads: number, D: number, backward: boolean): BenchCase {
  const rows = B * T, cols = heads * D;
  return {
    kernel: backward ? "rope_backward" : "rope_forward",
    variant: "storage",
    shape: { rows, cols },
    setup: async (engine) => {
      const s = { B, T, heads, D };
      const frequencies = ropeInverseFrequencies(D, 100000);
      const rng = new Rng(rows + cols);
      const data = { x: f32(rng.normal(rows * cols)), dy: f32(rng.uniform(rows * cols)) };
      const x = engine.tensor([B, T, cols], { data: data.x, label: "x" });
      x.requiresGrad = backward;
      const dy = engine.tensor([B, T, cols], { data: data.dy, label: "dy" });
      const table = ropeTable(engine, frequencies, T);
      const tape = new Tape(engine);
      const y = rope(tape, x, table);
      if (backward) await engine.run(tape.forward());
      return {
        commands: backward ? tape.backward(y, dy) : tape.forward(),
        check: () =>
          passes(async () => {
            if (!backward) {
              return assertClose(
                await engine.readF32(y),
                ropeRef(data.x, frequencies, s),
                TOL,
                "y",
              );
            }
            const ref = ropeBackwardRef(data.dy, frequencies, s);
            assertClose(await engine.readF32(x.grad!), ref, TOL, "dx");
          }),
        // Reads x (dy) and the table, writes y (accumulates into dx: reads it too).
        bytes: 4 * (rows * cols * (backward ? 3 : 2) + T * D),
        dispose: () => {
          tape.dispose();
          for (const t of [x, dy, table]) t.dispose();
        },
      };
    },
  };
}

export const cases: BenchCase[] = [9, 3].flatMap((heads) => [
  ropeCase(8, 128, heads, 64, false),
  ropeCase(8, 128, heads, 64, true),
]);
