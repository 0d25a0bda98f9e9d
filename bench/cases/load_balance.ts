// The load-balancing loss of one MoE layer at N = 1024 (the shipped batch, 8 × 128 tokens) and
// N = 8192 (the paper's, 64 × 128) with E = 4, k = 2, ρ = 0.3. gbs counts the logits read: once
// by the forward pass ("fwd"); with the backward pass ("fwd+bwd") also once more and the
// logits' gradient read and written (it accumulates into a leaf's .grad).
import type { BenchCase } from "../case.ts";
import { loadBalance } from "../../kernels/load_balance.ts";
import { Tape } from "../../engine/tape.ts";
import { loadBalanceBackwardRef, loadBalanceRef } from "../../tests/ref/load_balance.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

const [EXPERTS, K, RHO] = [4, 2, 0.3];
// As in tests/kernels/load_balance_test.ts (f32 sums of N probabilities; gradients of size
// ~max C/N).
const LB_TOL = { atol: 0, rtol: 4e-6 };

export const cases: BenchCase[] = [1024, 8192].flatMap((rows) =>
  [false, true].map((withBackward): BenchCase => ({
    kernel: "load_balance",
    variant: withBackward ? `k${K} fwd+bwd` : `k${K} fwd`,
    shape: { rows, cols: EXPERTS },
    setup: (engine) => {
      const logits = f32(new Rng(7).normal(rows * EXPERTS, 2));
      const tape = new Tape(engine);
      const x = engine.tensor([rows, EXPERTS], { data: logits, label: "router logits" });
      x.requiresGrad = withBackward;
      const lb = loadBalance(tape, x, K, RHO);
      const commands = withBackward ? [...tape.forward(), ...tape.backward(lb)] : tape.forward();
      const logitsBytes = rows * EXPERTS * 4;
      return Promise.resolve({
        commands,
        check: async () => {
          try {
            const ref = loadBalanceRef(logits, EXPERTS, K, RHO);
            assertClose(await engine.readF32(lb), [ref], LB_TOL, "LB");
            if (withBackward) {
              // One run of the commands has added dlogits once into the zero gradient.
              const grad = loadBalanceBackwardRef(logits, EXPERTS, K, RHO, 1);
              const scale = Math.max(...grad.map(Math.abs));
              const tol = { atol: 4e-6 * scale, rtol: 4e-6 };
              assertClose(await engine.readF32(x.grad!), grad, tol, "dlogits");
            }
            return true;
          } catch {
            return false;
          }
        },
        bytes: (withBackward ? 4 : 1) * logitsBytes,
        dispose: () => {
          tape.dispose();
          x.dispose();
        },
      });
    },
  }))
);
