import type { BenchCase } from "../case.ts";
import { gelu } from "../../kernels/gelu.ts";
import { Tape } from "../../engine/tape.ts";
import { geluRef } from "../../tests/ref/gelu.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

export const cases: BenchCase[] = [[1024, 1024], [512, 3072]].map(([rows, cols]) => ({
  kernel: "gelu",
  variant: "storage",
  shape: { rows, cols },
  setup: (engine) => {
    const xs = f32(new Rng(7).uniform(rows * cols, -4, 4));
    const tape = new Tape(engine);
    const x = engine.tensor([rows, cols], { data: xs, label: "x" });
    const y = gelu(tape, x);
    return Promise.resolve({
      commands: tape.forward(),
      check: async () => {
        try {
          assertClose(await engine.readF32(y), geluRef(xs), { atol: 1e-6, rtol: 1e-5 }, "gelu");
          return true;
        } catch {
          return false;
        }
      },
      bytes: 2 * rows * cols * 4,
      dispose: () => {
        tape.dispose();
        x.dispose();
      },
    });
  },
}));
