// The router's top-k gate, forward and backward, at T = 1024 tokens for E = 2 and 4 experts.
// gbs counts logits and gates read or written: forward reads logits and writes gates; backward
// reads logits and dgates and adds into the logits' gradient (read and write).
import type { BenchCase } from "../case.ts";
import { topkGate } from "../../kernels/topk_gate.ts";
import { Tape } from "../../engine/tape.ts";
import { topkGateBackwardRef, topkGateRef } from "../../tests/ref/topk_gate.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

const K = 2;

export const cases: BenchCase[] = [[1024, 2], [1024, 4]].map(([rows, cols]) => ({
  kernel: "topk_gate",
  variant: `k${K} fwd+bwd`,
  shape: { rows, cols },
  setup: (engine) => {
    const rng = new Rng(7);
    const logits = f32(rng.normal(rows * cols, 2));
    const dgates = f32(rng.uniform(rows * cols));
    const tape = new Tape(engine);
    const x = engine.tensor([rows, cols], { data: logits, label: "router logits" });
    const dy = engine.tensor([rows, cols], { data: dgates, label: "dgates" });
    x.requiresGrad = true;
    const gates = topkGate(tape, x, K);
    const commands = [...tape.forward(), ...tape.backward(gates, dy)];
    return Promise.resolve({
      commands,
      check: async () => {
        try {
          const tol = { atol: 1e-6, rtol: 1e-5 };
          assertClose(await engine.readF32(gates), topkGateRef(logits, cols, K), tol, "gates");
          // One run of the commands has added dlogits once into the zero gradient.
          const ref = topkGateBackwardRef(logits, dgates, cols, K);
          assertClose(await engine.readF32(x.grad!), ref, tol, "dlogits");
          return true;
        } catch {
          return false;
        }
      },
      bytes: 6 * rows * cols * 4,
      dispose: () => {
        tape.dispose();
        x.dispose();
        dy.dispose();
      },
    });
  },
}));
