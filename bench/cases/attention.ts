// Causal self-attention at the reference config and at GPT-2 sizes, forward alone and forward
// plus backward, for both kernel variants where compile time allows.
//
// FLOP counting (model FLOPs, 2 per multiply-add, causal half only): forward = q·kᵀ and P·v
// = 4·B·H·T²·hs/2; backward = dv, dP, dq, dk = twice that; forward+backward = 3× forward. The
// kernels do more (backward recomputes q·kᵀ twice and dO·vᵀ once more), which is not counted.
import { type BenchCase, passes } from "../case.ts";
import type { KernelVariant } from "../../kernels/variant.ts";
import { Tape } from "../../engine/tape.ts";
import { attention } from "../../kernels/attention.ts";
import { attentionBackwardRef, attentionRef } from "../../tests/ref/attention.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

// As in tests/kernels/attention_test.ts.
const OUT_TOL = { atol: 5e-6, rtol: 1e-5 };
const gradTol = (T: number) => ({ atol: 1e-5 + 3e-8 * T, rtol: 1e-5 });

interface Config {
  B: number;
  T: number;
  C: number;
  heads: number;
  variants: KernelVariant[];
}

const configs: Config[] = [
  { B: 8, T: 128, C: 256, heads: 4, variants: ["texture", "storage"] }, // reference config
  { B: 1, T: 1024, C: 768, heads: 12, variants: ["texture", "storage"] }, // GPT-2, one sequence
  { B: 4, T: 1024, C: 768, heads: 12, variants: ["texture"] }, // GPT-2, four sequences
];

function attentionCase(config: Config, variant: KernelVariant, backward: boolean): BenchCase {
  const { B, T, C, heads } = config;
  const forwardFlops = 4 * B * heads * T * T * (C / heads) / 2;
  return {
    kernel: backward ? "attention_forward_backward" : "attention_forward",
    variant,
    shape: { B, T, C, heads },
    setup: (engine) => {
      const rng = new Rng(B + T + C);
      const qkvData = f32(rng.normal(B * T * 3 * C));
      const doutData = f32(rng.normal(B * T * C));
      const qkv = engine.tensor([B, T, 3 * C], { data: qkvData, label: "qkv" });
      qkv.requiresGrad = backward;
      const dout = engine.tensor([B, T, C], { data: doutData, label: "dout" });
      const tape = new Tape(engine);
      const out = attention(tape, qkv, heads, { variant });
      const commands = backward ? [...tape.forward(), ...tape.backward(out, dout)] : tape.forward();
      // Sequences are independent and run the same code: the reference checks the first one
      // (the float64 reference takes ~5 s per GPT-2 sequence).
      const first = { B: 1, T, C, nHead: heads };
      const firstOf = (v: Float32Array, width: number) => v.subarray(0, T * width);
      return Promise.resolve({
        commands,
        check: () =>
          passes(async () => {
            const qkv0 = qkvData.subarray(0, T * 3 * C);
            assertClose(
              firstOf(await engine.readF32(out), C),
              attentionRef(qkv0, first),
              OUT_TOL,
              "attention out",
            );
            if (!backward) return;
            assertClose(
              firstOf(await engine.readF32(qkv.grad!), 3 * C),
              attentionBackwardRef(qkv0, doutData.subarray(0, T * C), first),
              gradTol(T),
              "attention dqkv",
            );
          }),
        flops: backward ? 3 * forwardFlops : forwardFlops,
        dispose: () => {
          tape.dispose();
          qkv.dispose();
          dout.dispose();
        },
      });
    },
  };
}

export const cases: BenchCase[] = configs.flatMap((config) =>
  config.variants.flatMap((variant) => [
    attentionCase(config, variant, false),
    attentionCase(config, variant, true),
  ])
);
