// Utility commands and ops on whole tensors:
//   fill(t, c):      t ← c                  (a command; exact bits, any f32 or u32 value)
//   copy(src, dst):  dst ← src              (a command; same size and dtype, checked when built)
//   scale(x, α):     y = α·x,  dx = α·dy    (an op with backward)
// The kernels are entries of the elementwise skeleton (kernels/elementwise.ts).
import type { Command, Copy, Engine } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { elementwise, type ElementwiseOptions, unary } from "./elementwise.ts";
import { f32Bits, f32BitsLiteral } from "./literals.ts";

/**
 * Commands that set every element of `t` to `value` (a float for f32 tensors, an integer in
 * [0, 2³²) for u32 ones). Zero bits become a clear; anything else a kernel writing the bits.
 */
export function fill(
  engine: Engine,
  t: Tensor,
  value: number,
  label = `fill ${t.label}`,
): Command[] {
  t.assertLive();
  let bits: number;
  if (t.dtype === "f32") bits = f32Bits(value);
  else if (Number.isInteger(value) && value >= 0 && value < 2 ** 32) bits = value;
  else throw new ShapeError(`${label}: ${value} is not a u32 value for ${t}`);
  if (bits === 0) return [{ kind: "clear", label, tensor: t }];
  return elementwise(engine, label, {
    name: "fill",
    inputs: [],
    outputs: [{ name: "out", value: (type) => `${type}(0x${bits.toString(16)}u)` }],
    scalar: "u32",
  }, [t]);
}

/** A command copying `src` into `dst`; their element counts and dtypes must match. */
export function copy(src: Tensor, dst: Tensor, label = `copy ${src.label} to ${dst.label}`): Copy {
  src.assertLive();
  dst.assertLive();
  if (src.size !== dst.size || src.dtype !== dst.dtype) {
    throw new ShapeError(`${label}: cannot copy ${src} into ${dst}`);
  }
  return { kind: "copy", label, src, dst };
}

/** y = α·x, elementwise. α is baked into the kernel (one pipeline per α and size). */
export function scale(tape: Tape, x: Tensor, alpha: number, opts: ElementwiseOptions = {}): Tensor {
  if (!Number.isFinite(Math.fround(alpha))) {
    throw new RangeError(`scale: α = ${alpha} is not finite in f32`);
  }
  // Exact bits (a decimal literal would lose the sign of -0); the value in a comment.
  const setup = `let alpha = ${f32BitsLiteral(alpha)}; // ${alpha}`;
  return unary(
    tape,
    {
      name: "scale",
      forward: {
        name: "scale",
        inputs: ["x"],
        outputs: [{ name: "y", value: () => "alpha * x[i]" }],
        setup,
      },
      backward: {
        name: "scale_backward",
        inputs: ["dy"],
        outputs: [{ name: "dx", value: () => "alpha * dy[i]" }],
        setup,
      },
    },
    x,
    `${alpha}·${x.label}`,
    opts,
  );
}
