// Grouped-query causal attention at SmolLM2-135M's shape (9 query heads, 3 KV heads of 64),
// batch 8 × sequence 128 for both kernel variants and one sequence of 1024 (texture), forward
// alone and forward plus backward.
//
// FLOP counting as in attention.ts (model FLOPs of the causal half, per query head): forward
// = 4·B·H·T²·D/2, forward+backward = 3× forward.
import { type BenchCase, passes } from "../case.ts";
import type { KernelVariant } from "../../kernels/variant.ts";
import { Tape } from "../../engine/tape.ts";
import { groupedAttention } from "../../kernels/attention.ts";
import {
  groupedAttentionBackwardRef,
  groupedAttentionRef,
  type GroupedAttentionShape,
} from "../../tests/ref/attention.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

// As in tests/kernels/grouped_attention_test.ts.
const OUT_TOL = { atol: 5e-6, rtol: 1e-5 };
const gradTol = (s: GroupedAttentionShape) => ({
  atol: 1e-5 + 3e-8 * s.T * (s.heads / s.kvHeads),
  rtol: 1e-5,
});

interface Config extends GroupedAttentionShape {
  variants: KernelVariant[];
}

const configs: Config[] = [
  { B: 8, T: 128, heads: 9, kvHeads: 3, D: 64, variants: ["texture", "storage"] },
  { B: 1, T: 1024, heads: 9, kvHeads: 3, D: 64, variants: ["texture"] },
];

function groupedCase(config: Config, variant: KernelVariant, backward: boolean): BenchCase {
  const { B, T, heads, kvHeads, D } = config;
  const forwardFlops = 4 * B * heads * T * T * D / 2;
  return {
    kernel: backward ? "grouped_attention_forward_backward" : "grouped_attention_forward",
    variant,
    shape: { B, T, C: heads * D, heads, kv_heads: kvHeads },
    setup: (engine) => {
      const rng = new Rng(B + T + heads * D);
      const rows = B * T;
      const data = {
        q: f32(rng.normal(rows * heads * D)),
        k: f32(rng.normal(rows * kvHeads * D)),
        v: f32(rng.normal(rows * kvHeads * D)),
        dout: f32(rng.normal(rows * heads * D)),
      };
      const q = engine.tensor([B, T, heads * D], { data: data.q, label: "q" });
      const k = engine.tensor([B, T, kvHeads * D], { data: data.k, label: "k" });
      const v = engine.tensor([B, T, kvHeads * D], { data: data.v, label: "v" });
      for (const t of [q, k, v]) t.requiresGrad = backward;
      const dout = engine.tensor([B, T, heads * D], { data: data.dout, label: "dout" });
      const tape = new Tape(engine);
      const out = groupedAttention(tape, q, k, v, heads, kvHeads, { variant });
      const commands = backward ? [...tape.forward(), ...tape.backward(out, dout)] : tape.forward();
      // Sequences are independent and run the same code: the reference checks the first one.
      const first = { B: 1, T, heads, kvHeads, D };
      const firstOf = (values: Float32Array | Float64Array, width: number) =>
        values.subarray(0, T * width);
      return Promise.resolve({
        commands,
        check: () =>
          passes(async () => {
            const [q0, k0, v0] = [
              firstOf(data.q, heads * D),
              firstOf(data.k, kvHeads * D),
              firstOf(data.v, kvHeads * D),
            ];
            assertClose(
              firstOf(await engine.readF32(out), heads * D),
              groupedAttentionRef(q0, k0, v0, first),
              OUT_TOL,
              "out",
            );
            if (!backward) return;
            const dout0 = firstOf(data.dout, heads * D);
            const ref = groupedAttentionBackwardRef(q0, k0, v0, dout0, first);
            for (
              const [t, expected, width] of [[q, ref.dq, heads], [k, ref.dk, kvHeads], [
                v,
                ref.dv,
                kvHeads,
              ]] as const
            ) {
              const got = firstOf(await engine.readF32(t.grad!), width * D);
              assertClose(got, expected, gradTol(first), `d${t.label}`);
            }
          }),
        flops: backward ? 3 * forwardFlops : forwardFlops,
        dispose: () => {
          tape.dispose();
          for (const t of [q, k, v, dout]) t.dispose();
        },
      });
    },
  };
}

export const cases: BenchCase[] = configs.flatMap((config) =>
  config.variants.flatMap((variant) => [
    groupedCase(config, variant, false),
    groupedCase(config, variant, true),
  ])
);
