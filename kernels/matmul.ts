// Matrix multiplication C = op(A)·op(B) (+ bias), op(X) = X or Xᵀ, optionally batched, with its
// backward dA = dC·op(B)ᵀ, dB = op(A)ᵀ·dC (summed over the batch when B is shared), dbias =
// column sums of dC. Every product, forward or backward, goes through `productCommands`, which
// splits it into blocks that respect the adapter's limits (kernels/matmul_plan.ts) and hands
// them to one of two kernel families: `texture` (kernels/matmul_texture.ts, lavapipe's fast
// path) or `storage` (kernels/matmul_storage.ts, real GPUs).
import type { Command, Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { type Operand, planProduct, type Product, product } from "./matmul_plan.ts";
import { storageBlockCommands, storageLimits } from "./matmul_storage.ts";
import { textureBlocksCommands, textureLimits } from "./matmul_texture.ts";
import { sumRowsCommands } from "./sum.ts";
import { type KernelVariant, kernelVariant } from "./variant.ts";

export interface MatmulOptions {
  /** a is stored [K, M] (per batch) and used transposed. */
  transA?: boolean;
  /** b is stored [N, K] and used transposed (e.g. a tied embedding as the output layer). */
  transB?: boolean;
  /** [N], added to every output row in the kernel's epilogue. */
  bias?: Tensor;
  /** Kernel family; the engine's (kernels/variant.ts) by default. */
  variant?: KernelVariant;
  /** Split as if a binding could hold at most this many bytes (tests of the chunked path). */
  maxBindingBytes?: number;
}

/** C = op(a)·op(b) (+ bias); a [.., M, K] (or [.., K, M]), b [K, N] (or [N, K]) or batched like a. */
export function matmul(tape: Tape, a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const engine = tape.engine;
  const transA = opts.transA ?? false, transB = opts.transB ?? false;
  const bias = opts.bias ?? null;
  const what = `matmul(${a}${transA ? "ᵀ" : ""}, ${b}${transB ? "ᵀ" : ""}${
    bias ? `, bias ${bias}` : ""
  })`;
  if ([a, b, bias].some((t) => t && t.dtype !== "f32")) throw new ShapeError(`${what}: needs f32`);
  if (a.shape.length < 2 || b.shape.length < 2) {
    throw new ShapeError(`${what}: a and b must be matrices (optionally batched)`);
  }
  const lead = a.shape.slice(0, -2);
  const [aRows, aCols] = a.shape.slice(-2);
  const [bRows, bCols] = b.shape.slice(-2);
  const [M, K] = transA ? [aCols, aRows] : [aRows, aCols];
  const [bK, N] = transB ? [bCols, bRows] : [bRows, bCols];
  if (bK !== K) throw new ShapeError(`${what}: inner dimensions differ (${K} and ${bK})`);
  const bBatched = b.shape.length > 2;
  if (bBatched && b.shape.slice(0, -2).join() !== lead.join()) {
    throw new ShapeError(`${what}: a batched b needs the batch dimensions of a`);
  }
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== N)) {
    throw new ShapeError(`${what}: bias must be [${N}]`);
  }
  const batch = lead.reduce((x, y) => x * y, 1);
  const variant = opts.variant ?? kernelVariant(engine);
  const maxBindingBytes = opts.maxBindingBytes ?? engine.limits.maxStorageBufferBindingSize;
  const run = (p: Product) => productCommands(engine, p, variant, maxBindingBytes);
  const A = (trans: boolean) => operand(a, trans, true);
  const B = (trans: boolean) => operand(b, trans, bBatched);
  const out = tape.tensor([...lead, M, N], `matmul(${a.label}, ${b.label})`);
  const fresh = { tensor: out, accumulate: false };
  tape.record({
    name: "matmul",
    inputs: bias ? [a, b, bias] : [a, b],
    outputs: [out],
    forward: run(product("matmul", A(transA), B(transB), batch, false, fresh, bias)),
    backward: (ctx) => {
      const dC = ctx.gradOutput(0);
      // Read as [.., M, N] whatever shape an upstream gradient was given in.
      const dOut = (trans: boolean): Operand => ({
        tensor: dC,
        rows: M,
        cols: N,
        trans,
        batched: true,
      });
      const commands: Command[] = [];
      const dA = ctx.gradInput(0);
      if (dA) {
        // dA = dC·op(B)ᵀ; an a stored [K, M] takes its transpose, op(B)·dCᵀ.
        const [left, right] = transA ? [B(transB), dOut(true)] : [dOut(false), B(!transB)];
        commands.push(...run(product("matmul dA", left, right, batch, false, dA, null)));
      }
      const dB = ctx.gradInput(1);
      if (dB) {
        // dB = op(A)ᵀ·dC, summed over the batch when b is shared; a b stored [N, K] takes
        // its transpose, dCᵀ·op(A).
        const [left, right] = transB ? [dOut(true), A(transA)] : [A(!transA), dOut(false)];
        commands.push(...run(product("matmul dB", left, right, batch, !bBatched, dB, null)));
      }
      const dBias = bias ? ctx.gradInput(2) : null;
      if (dBias) {
        commands.push(...sumRowsCommands(tape, dC, batch * M, N, dBias, {
          label: "matmul dbias",
          maxBindingBytes,
        }));
      }
      return commands;
    },
  });
  return out;
}

/** The last two dimensions of `tensor` as a (possibly transposed) matrix operand. */
function operand(tensor: Tensor, trans: boolean, batched: boolean): Operand {
  const [rows, cols] = tensor.shape.slice(-2);
  return { tensor, rows, cols, trans, batched };
}

/** The commands computing one product with the given kernel family (the engine's by default). */
export function productCommands(
  engine: Engine,
  product: Product,
  variant = kernelVariant(engine),
  maxBindingBytes = engine.limits.maxStorageBufferBindingSize,
): Command[] {
  const texture = variant === "texture";
  const limits = texture ? textureLimits(engine.limits.maxTextureDimension2D) : storageLimits();
  const blocks = planProduct(engine, product, limits, maxBindingBytes);
  return texture
    ? textureBlocksCommands(engine, blocks)
    : blocks.flatMap((block) => storageBlockCommands(engine, block));
}
