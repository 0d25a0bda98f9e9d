// The SiLU-gated product at SmolLM2-135M's MLP width (1536, batch 8 × sequence 128) and at
// Llama 3.2 1B's (8192, one sequence of 512), forward and backward, checked against float64.
import { type BenchCase, passes } from "../case.ts";
import { Tape } from "../../engine/tape.ts";
import { swiglu } from "../../kernels/swiglu.ts";
import { swigluBackwardRef, swigluRef } from "../../tests/ref/swiglu.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

// As in tests/kernels/swiglu_test.ts: a few ulps of f32 exp and division, then products.
const TOL = { atol: 1e-6, rtol: 2e-6 };

function swigluCase(rows: number, cols: number, backward: boolean): BenchCase {
  return {
    kernel: backward ? "swiglu_backward" : "swiglu_forward",
    variant: "storage",
    shape: { rows, cols },
    setup: async (engine) => {
      const n = rows * cols;
      const rng = new Rng(n);
      const data = {
        gate: f32(rng.uniform(n, -8, 8)),
        up: f32(rng.uniform(n, -2, 2)),
        dy: f32(rng.uniform(n)),
      };
      const gate = engine.tensor([rows, cols], { data: data.gate, label: "gate" });
      const up = engine.tensor([rows, cols], { data: data.up, label: "up" });
      for (const t of [gate, up]) t.requiresGrad = backward;
      const dy = engine.tensor([rows, cols], { data: data.dy, label: "dy" });
      const tape = new Tape(engine);
      const y = swiglu(tape, gate, up);
      if (backward) await engine.run(tape.forward());
      return {
        commands: backward ? tape.backward(y, dy) : tape.forward(),
        check: () =>
          passes(async () => {
            if (!backward) {
              return assertClose(await engine.readF32(y), swigluRef(data.gate, data.up), TOL, "y");
            }
            const ref = swigluBackwardRef(data.gate, data.up, data.dy);
            assertClose(await engine.readF32(gate.grad!), ref.dgate, TOL, "dgate");
            assertClose(await engine.readF32(up.grad!), ref.dup, TOL, "dup");
          }),
        // Forward reads gate and up, writes y; backward reads gate, up and dy and reads and
        // writes the two accumulated leaf gradients.
        bytes: 4 * n * (backward ? 7 : 3),
        dispose: () => {
          tape.dispose();
          for (const t of [gate, up, dy]) t.dispose();
        },
      };
    },
  };
}

export const cases: BenchCase[] = [[1024, 1536], [512, 8192]].flatMap(([rows, cols]) => [
  swigluCase(rows, cols, false),
  swigluCase(rows, cols, true),
]);
