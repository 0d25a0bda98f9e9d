// LoRA on a frozen linear layer, fused onto that layer's output (row-vector convention, PEFT
// shapes: A = lora_A [r, in], B = lora_B [out, r]):
//   u = x·Aᵀ [N, r] (saved),   y = base + s·u·Bᵀ [N, out]
// Backward (each gradient only when asked for, overwrite or accumulate):
//   dbase = dy,  dB = s·dyᵀ·u,  du = s·dy·B,  dA = duᵀ·x,  dx = du·A
// r is small (1..64), so these are skinny products with the dedicated low-rank kernels of
// kernels/lowrank.ts (contract, expand, outer; plain LoRA is their one-expert case), which the
// mixtures of experts (kernels/mixture.ts) run too. Every matrix is read 4 consecutive columns at
// a time: vec4 loads when its row length is a multiple of 4, masked scalar loads otherwise.
import type { Command } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { GradTarget, Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { IDENTITY } from "./activation.ts";
import { contract, expand, type LowRank, outer, sumBlocks } from "./lowrank.ts";

/** Shapes of one LoRA-adapted layer. */
interface LoraShape {
  rows: number;
  inFeatures: number;
  outFeatures: number;
  rank: number;
}

function checkShapes(x: Tensor, base: Tensor, a: Tensor, b: Tensor): LoraShape {
  const inFeatures = x.shape[x.shape.length - 1];
  const outFeatures = base.shape[base.shape.length - 1];
  const rank = a.shape[0];
  const rows = x.size / inFeatures;
  const leading = (t: Tensor) => t.shape.slice(0, -1).join(",");
  const ok = x.shape.length >= 2 && leading(x) === leading(base) &&
    a.shape.length === 2 && a.shape[1] === inFeatures &&
    b.shape.length === 2 && b.shape[0] === outFeatures && b.shape[1] === rank &&
    [x, base, a, b].every((t) => t.dtype === "f32");
  if (!ok) {
    throw new ShapeError(
      `loraLinear: x ${x} [..., in], base ${base} [..., out], A ${a} [r, in], B ${b} [out, r] ` +
        `do not fit together`,
    );
  }
  return { rows, inFeatures, outFeatures, rank };
}

/**
 * y = base + scale·(x·Aᵀ)·Bᵀ: a LoRA delta added onto the frozen layer's output `base`.
 * x [..., in], base [..., out], A [r, in], B [out, r]; y has base's shape.
 */
export function loraLinear(
  tape: Tape,
  x: Tensor,
  base: Tensor,
  a: Tensor,
  b: Tensor,
  scale: number,
): Tensor {
  const engine = tape.engine;
  const { rows, inFeatures, outFeatures, rank } = checkShapes(x, base, a, b);
  if (!Number.isFinite(scale)) throw new ShapeError(`loraLinear: scale ${scale} is not finite`);
  const u = tape.tensor([rows, rank], `lora u(${x.label})`);
  const y = tape.tensor(base.shape, `lora(${base.label})`);
  // One unstacked matrix per operand, read as is (no gate, gelu or bias).
  const one: LowRank = { rows, rank, experts: 1, stacked: false };
  const plain = {
    ...one,
    actPerExpert: false,
    bigPerExpert: false,
    activation: IDENTITY,
    gated: false,
    bias: false,
  };
  const forward = [
    contract(engine, "lora x·Aᵀ", {
      ...plain,
      k: inFeatures,
      weight: "rank-major",
      scale: 1,
    }, [x, a, u]),
    expand(engine, "lora base + s·u·Bᵀ", {
      ...plain,
      wide: outFeatures,
      weight: "wide-major",
      scale,
      epilogue: "base",
    }, [u, b, y, base]),
  ];
  /** target (+)= sumScale·Σ_n big[n]ᵀ ⊗ small[n], big [N, wide], small [N, r]. */
  const outerProduct = (
    label: string,
    layout: "rank-major" | "wide-major",
    [big, small]: [Tensor, Tensor],
    sumScale: number,
    target: GradTarget,
  ) =>
    outer(
      tape,
      label,
      { ...plain, wide: big.shape[big.shape.length - 1], layout },
      { big: [big], small },
      sumScale,
      target,
    );

  tape.record({
    name: "lora_linear",
    inputs: [x, base, a, b],
    outputs: [y],
    forward,
    backward: (ctx) => {
      const dy = ctx.gradOutput(0);
      const [dx, dbase, da, db] = [0, 1, 2, 3].map((i) => ctx.gradInput(i));
      const commands: Command[] = [];
      if (dbase) {
        commands.push(
          dbase.accumulate
            ? sumBlocks(engine, "lora dbase += dy", dy, 1, dbase.tensor, true)
            : { kind: "copy", label: "lora dbase = dy", src: dy, dst: dbase.tensor },
        );
      }
      // dB [out, r] = s·Σ_n dy[n]ᵀ ⊗ u[n]
      if (db) commands.push(...outerProduct("lora dB", "wide-major", [dy, u], scale, db));
      if (!da && !dx) return commands;
      // du [N, r] = s·dy·B
      const du = tape.tensor([rows, rank], `lora du(${x.label})`);
      commands.push(contract(engine, "lora du = s·dy·B", {
        ...plain,
        k: outFeatures,
        weight: "k-major",
        scale,
      }, [dy, b, du]));
      // dA [r, in] = Σ_n du[n]ᵀ ⊗ x[n]
      if (da) commands.push(...outerProduct("lora dA", "rank-major", [x, du], 1, da));
      if (dx) {
        // dx [N, in] = du·A
        commands.push(expand(engine, "lora dx = du·A", {
          ...plain,
          wide: inFeatures,
          weight: "rank-major",
          scale: 1,
          epilogue: dx.accumulate ? "add" : "store",
        }, [du, a, dx.tensor]));
      }
      return commands;
    },
  });
  return y;
}
