import type { BenchCase } from "../case.ts";
import { add } from "../../kernels/add.ts";
import { Tape } from "../../engine/tape.ts";
import { addRef } from "../../tests/ref/add.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

export const cases: BenchCase[] = [[1024, 768]].map(([rows, cols]) => ({
  kernel: "add",
  variant: "storage",
  shape: { rows, cols },
  setup: (engine) => {
    const rng = new Rng(9);
    const as = f32(rng.uniform(rows * cols)), bs = f32(rng.uniform(rows * cols));
    const a = engine.tensor([rows, cols], { data: as, label: "a" });
    const b = engine.tensor([rows, cols], { data: bs, label: "b" });
    const tape = new Tape(engine);
    const out = add(tape, a, b);
    return Promise.resolve({
      commands: tape.forward(),
      check: async () => {
        try {
          // One f32 addition: exactly the rounded float64 sum.
          assertClose(await engine.readF32(out), f32(addRef(as, bs)), { atol: 0, rtol: 0 }, "add");
          return true;
        } catch {
          return false;
        }
      },
      bytes: 3 * rows * cols * 4,
      dispose: () => {
        tape.dispose();
        a.dispose();
        b.dispose();
      },
    });
  },
}));
