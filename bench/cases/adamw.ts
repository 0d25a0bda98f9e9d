// One fused AdamW step on a GPT-2 MLP weight (768×3072): reads p, g, m, v and writes p, m, v.
import type { BenchCase } from "../case.ts";
import { AdamW } from "../../model/optim.ts";
import { adamwStepRef } from "../../tests/ref/adamw.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

const HYPER = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01 };

export const cases: BenchCase[] = [[768, 3072]].map(([rows, cols]) => ({
  kernel: "adamw",
  variant: "storage",
  shape: { rows, cols },
  setup: (engine) => {
    const n = rows * cols;
    const rng = new Rng(3);
    const p0 = f32(rng.normal(n, 0.02));
    const g = f32(rng.normal(n, 1e-3));
    const p = engine.tensor([rows, cols], { data: p0, label: "c_fc.weight" });
    p.requiresGrad = true;
    const opt = new AdamW(engine, [p], {
      lr: HYPER.lr,
      betas: [HYPER.beta1, HYPER.beta2],
      eps: HYPER.eps,
      weightDecay: HYPER.weightDecay,
    });
    engine.write(p.grad!, g);
    return Promise.resolve({
      // Timed repetitions replay step 1's hyperparameters: the work per step is the same.
      commands: [...opt.step()],
      check: async () => {
        const ref = { p: p0.slice(), m: new Float64Array(n), v: new Float64Array(n) };
        adamwStepRef(ref, g, 1, HYPER);
        try {
          // One step's f32 roundings (see tests/kernels/adamw_test.ts).
          assertClose(await engine.readF32(p), ref.p, { atol: 1e-6, rtol: 2e-6 }, "adamw");
          return true;
        } catch {
          return false;
        }
      },
      // Reads p, g, m, v and writes p, m, v: 7 f32 per element.
      bytes: 7 * 4 * n,
      dispose: () => {
        opt.dispose();
        p.dispose();
      },
    });
  },
}));
