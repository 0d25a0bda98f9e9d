// What the tests and bench cases of the two mixtures of LoRA experts (kernels/moe_mlp.ts,
// kernels/moe_swiglu.ts) share: how gates look, the tolerance of their f32 chains, the rows a
// large shape is checked on, and the check that a step gives the same bits twice.
import type { Command, Engine } from "../../engine/device.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { f32, type Rng } from "../util.ts";

/**
 * How gates look: `softmax`, a dense softmax over all experts (k = E); `sparse`, zeros for about
 * a third of the (row, expert) pairs and rows summing to anything in [0, 1.5] (top-k with
 * unselected experts; k = 1 keeps p_max < 1); `ones`, every gate 1 (E = 1: no router).
 */
export type GateKind = "softmax" | "sparse" | "ones";

export function gates(rng: Rng, rows: number, experts: number, kind: GateKind): Float64Array {
  const out = new Float64Array(rows * experts);
  for (let n = 0; n < rows; n++) {
    const row = out.subarray(n * experts, (n + 1) * experts);
    if (kind === "ones") {
      row.fill(1);
    } else if (kind === "softmax") {
      const logits = rng.normal(experts, 2);
      const max = Math.max(...logits);
      const e = logits.map((v) => Math.exp(v - max));
      const sum = e.reduce((a, b) => a + b, 0);
      row.set(e.map((v) => v / sum));
    } else {
      for (let j = 0; j < experts; j++) row[j] = rng.next() < 0.35 ? 0 : 1.5 * rng.next();
    }
  }
  return f32(out);
}

/**
 * f32 error budget of the mixtures: every output is a chain of f32 dot products — the frozen
 * products over C (≤ 768 terms) and H (≤ 3072), low-rank deltas over r, dA/dB over N (64-row
 * partials, then a fixed sum of ≤ 16 partials), dgate over H and C. Rounding grows like
 * √K·2⁻²⁴ times the size of the partial sums, which is the size of the largest entries of the
 * tensor, not of each entry (dA, dgate entries cancel to small values among large ones); the
 * activation between the products passes errors on with slope ≤ 1.13 (GELU) or through a product
 * of two such chains (SwiGLU's silu(g)·u). So the absolute slack is relative to the tensor's
 * largest reference value: √3072·6e-8·(two chained products) ≈ 7e-6, ×~5 margin.
 */
export const MIXTURE_TOL = 5e-5;

/** atol MIXTURE_TOL·max|ref|, rtol MIXTURE_TOL (see MIXTURE_TOL). */
export function mixtureTolerance(ref: ArrayLike<number>): { atol: number; rtol: number } {
  let max = 0;
  for (let i = 0; i < ref.length; i++) max = Math.max(max, Math.abs(ref[i]));
  return { atol: MIXTURE_TOL * max, rtol: MIXTURE_TOL };
}

/** `count` rows spread evenly over `rows` (the first included). */
export function spreadRows(rows: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => Math.floor((i * rows) / count));
}

/** The rows `picked` of a row-major [N, width] array. */
export function pickRows(
  values: Float64Array | Float32Array,
  width: number,
  picked: number[],
): Float64Array {
  const out = new Float64Array(picked.length * width);
  picked.forEach((n, i) => out.set(values.subarray(n * width, (n + 1) * width), i * width));
  return out;
}

/**
 * Runs `step` twice, each time from cleared `grads` (leaf gradients it accumulates into), and
 * throws naming the first of `outputs` whose bits differ between the two runs.
 */
export async function assertSameBitsTwice(
  engine: Engine,
  step: Command[],
  grads: Tensor[],
  outputs: Record<string, Tensor>,
  what: string,
): Promise<void> {
  const bits: Uint32Array[][] = [];
  for (let run = 0; run < 2; run++) {
    await engine.run(grads.map((tensor) => ({ kind: "clear", label: "zero", tensor })));
    await engine.run(step);
    bits.push(
      await Promise.all(
        Object.values(outputs).map(async (t) => new Uint32Array((await engine.readF32(t)).buffer)),
      ),
    );
  }
  for (const [i, name] of Object.keys(outputs).entries()) {
    if (bits[0][i].some((word, j) => word !== bits[1][i][j])) {
      throw new Error(`${what}: ${name} differs between two runs`);
    }
  }
}
