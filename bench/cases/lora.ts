// A LoRA layer's forward and backward at GPT-2's c_fc (N=1024 tokens, 768→3072, r=8), all four
// inputs leaves (gradients accumulate). These kernels are memory-bound (r/2 flops per byte), so
// gbs counts the [N, ·] tensors each touched once: forward reads x and base and writes y;
// backward reads dy and x, and reads and writes dbase and dx.
import type { BenchCase } from "../case.ts";
import { loraLinear } from "../../kernels/lora.ts";
import { Tape } from "../../engine/tape.ts";
import { loraBackwardRef, loraRef } from "../../tests/ref/lora.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

const SCALE = 16 / Math.sqrt(8);

export const cases: BenchCase[] = [[1024, 768, 3072, 8]].map(([M, K, N, rank]) => ({
  kernel: "lora",
  variant: "fwd+bwd",
  shape: { M, K, N, rank },
  setup: (engine) => {
    const rng = new Rng(7);
    const shape = { rows: M, inFeatures: K, outFeatures: N, rank };
    const [x, base, a, b, dy] = [
      [M, K, 1],
      [M, N, 1],
      [rank, K, 1 / Math.sqrt(K)],
      [N, rank, 0.5],
      [M, N, 1],
    ].map(([rows, cols, bound]) => ({
      shape: [rows, cols],
      data: f32(rng.uniform(rows * cols, -bound, bound)),
    }));
    const tensors = [x, base, a, b].map((v) => engine.tensor(v.shape, { data: v.data }));
    const upstream = engine.tensor(dy.shape, { data: dy.data, label: "dy" });
    for (const t of tensors) t.requiresGrad = true;
    const tape = new Tape(engine);
    const y = loraLinear(tape, tensors[0], tensors[1], tensors[2], tensors[3], SCALE);
    const commands = [...tape.forward(), ...tape.backward(y, upstream)];
    return Promise.resolve({
      commands,
      check: async () => {
        try {
          const yRef = loraRef(shape, x.data, base.data, a.data, b.data, SCALE);
          const grads = loraBackwardRef(shape, x.data, a.data, b.data, SCALE, dy.data);
          const tol = (ref: Float64Array) => ({
            atol: 2e-5 * ref.reduce((m, v) => Math.max(m, Math.abs(v)), 0),
            rtol: 2e-5,
          });
          assertClose(await engine.readF32(y), yRef, tol(yRef), "y");
          // One run of the commands has added each gradient once into zero.
          const refs = [grads.dx, grads.dbase, grads.da, grads.db];
          for (const [i, t] of tensors.entries()) {
            assertClose(await engine.readF32(t.grad!), refs[i], tol(refs[i]), `grad ${i}`);
          }
          return true;
        } catch {
          return false;
        }
      },
      bytes: 4 * M * (4 * K + 5 * N),
      dispose: () => {
        tape.dispose();
        for (const t of [...tensors, upstream]) t.dispose();
      },
    });
  },
}));
