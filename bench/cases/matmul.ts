// Matmuls at the shapes a GPT-2 124M training step runs (B·T = 1024 rows, C = 768), both kernel
// families: the forward of each linear layer, its input gradient dX = dY·Wᵀ (`matmul_dx`) and its
// weight gradient dW = Xᵀ·dY over the 1024 rows (`matmul_dw`), plus the 512×768×3072 product
// the measuring stick uses. Each is timed whole (the texture family's pack kernels included) and
// checked on sampled entries against a float64 dot product.
import type { BenchCase } from "../case.ts";
import { Tape } from "../../engine/tape.ts";
import { matmul } from "../../kernels/matmul.ts";
import { matmulEntryRef, type MatmulShape } from "../../tests/ref/matmul.ts";
import { Rng } from "../../tests/util.ts";

const ROWS = 1024;
/** Linear layers of a GPT-2 block as [in, out]: c_attn, attn c_proj, c_fc, mlp c_proj. */
const LAYERS = [[768, 2304], [768, 768], [768, 3072], [3072, 768]];
const SAMPLES = 64;
/** f32 accumulation over K: |error| ≲ u·√K·Σ|a·b| (see tests/kernels/matmul_test.ts), 4× margin. */
const ERROR_FACTOR = 4 * 2 ** -24;

type Product = {
  kernel: string;
  M: number;
  K: number;
  N: number;
  transA: boolean;
  transB: boolean;
};

const products: Product[] = [
  ...LAYERS.map(([C, O]) => ({
    kernel: "matmul",
    M: ROWS,
    K: C,
    N: O,
    transA: false,
    transB: false,
  })),
  // dX [rows, in] = dY [rows, out] · Wᵀ, W stored [in, out].
  ...LAYERS.map(([C, O]) => ({
    kernel: "matmul_dx",
    M: ROWS,
    K: O,
    N: C,
    transA: false,
    transB: true,
  })),
  // dW [in, out] = Xᵀ · dY, X stored [rows, in].
  ...LAYERS.map(([C, O]) => ({
    kernel: "matmul_dw",
    M: C,
    K: ROWS,
    N: O,
    transA: true,
    transB: false,
  })),
  { kernel: "matmul", M: 512, K: 768, N: 3072, transA: false, transB: false },
];

function uniformF32(rng: Rng, n: number): Float32Array {
  const values = new Float32Array(n);
  for (let i = 0; i < n; i++) values[i] = rng.next() - 0.5;
  return values;
}

export const cases: BenchCase[] = (["texture", "storage"] as const).flatMap((variant) =>
  products.map((p): BenchCase => ({
    kernel: p.kernel,
    variant,
    shape: { M: p.M, K: p.K, N: p.N },
    setup: (engine) => {
      const rng = new Rng(p.M + p.K + p.N);
      const aValues = uniformF32(rng, p.M * p.K), bValues = uniformF32(rng, p.K * p.N);
      const tape = new Tape(engine);
      const a = engine.tensor(p.transA ? [p.K, p.M] : [p.M, p.K], { data: aValues, label: "a" });
      const b = engine.tensor(p.transB ? [p.N, p.K] : [p.K, p.N], { data: bValues, label: "b" });
      const c = matmul(tape, a, b, { transA: p.transA, transB: p.transB, variant });
      const shape: MatmulShape = { batch: 1, bBatched: false, ...p };
      return Promise.resolve({
        commands: tape.forward(),
        check: async () => {
          const got = await engine.readF32(c);
          for (let s = 0; s < SAMPLES; s++) {
            const m = Math.floor(rng.next() * p.M), n = Math.floor(rng.next() * p.N);
            const ref = matmulEntryRef(aValues, bValues, null, shape, 0, m, n);
            const bound = ERROR_FACTOR * Math.sqrt(p.K) * ref.scale;
            if (!(Math.abs(got[m * p.N + n] - ref.value) <= bound)) return false;
          }
          return true;
        },
        flops: 2 * p.M * p.K * p.N,
        dispose: () => {
          tape.dispose();
          a.dispose();
          b.dispose();
        },
      });
    },
  }))
);
