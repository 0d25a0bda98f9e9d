// Fused cross-entropy forward with dlogits, at the reference config's and GPT-2's vocabulary.
// gbs counts the bytes the fused op must move: logits read once, dlogits written once (the
// kernel reads each row a second time, partly from cache).
import type { BenchCase } from "../case.ts";
import { crossEntropyWithRowLosses } from "../../kernels/cross_entropy.ts";
import { Tape } from "../../engine/tape.ts";
import { crossEntropyBackwardRef, crossEntropyRef } from "../../tests/ref/cross_entropy.ts";
import { assertClose, Rng } from "../../tests/util.ts";

/** Rows of dlogits compared with the reference (all 51M values would take seconds to check). */
const CHECKED_ROWS = 8;

export const cases: BenchCase[] = [[1024, 8192], [1024, 50257]].map(([rows, cols]) => ({
  kernel: "cross_entropy",
  variant: "fwd+dlogits",
  shape: { rows, cols },
  setup: (engine) => {
    const rng = new Rng(7);
    const logits = new Float32Array(rows * cols);
    for (let i = 0; i < logits.length; i++) logits[i] = 8 * rng.next() - 4;
    const targets = rng.int(rows, cols);
    const tape = new Tape(engine);
    const x = engine.tensor([rows, cols], { data: logits, label: "logits" });
    const t = engine.tensor([rows], { data: targets, dtype: "u32", label: "targets" });
    x.requiresGrad = true;
    const { loss, rowLosses } = crossEntropyWithRowLosses(tape, x, t);
    return Promise.resolve({
      commands: tape.forward(),
      check: async () => {
        try {
          const ref = crossEntropyRef(logits, targets, cols);
          const lossTol = { atol: 2e-5, rtol: 2e-6 };
          assertClose(await engine.readF32(rowLosses), ref.rowLosses, lossTol, "row losses");
          // The saved dlogits reach x.grad (zero) through the backward pass.
          await engine.run(tape.backward(loss));
          const first = crossEntropyBackwardRef(
            logits.subarray(0, CHECKED_ROWS * cols),
            targets.subarray(0, CHECKED_ROWS),
            cols,
            1,
            rows,
          );
          const got = await engine.readF32(engine.view(x.grad!, 0, [CHECKED_ROWS * cols]));
          assertClose(got, first, { atol: 1e-6 / rows, rtol: 2e-5 }, "dlogits");
          return true;
        } catch {
          return false;
        }
      },
      bytes: 2 * rows * cols * 4,
      dispose: () => {
        tape.dispose();
        x.dispose();
        t.dispose();
      },
    });
  },
}));
