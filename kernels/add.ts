// Residual add of two tensors of the same shape: out = a + b.
// Backward: ∂out/∂a = ∂out/∂b = I, so each input's gradient is the upstream gradient itself.
// Overwriting a gradient is a buffer copy; accumulating is `target += dout`. When a and b are the
// same tensor, the tape hands out two accumulate targets on one tensor: two separate dispatches.
import type { Command } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { type Elementwise, elementwise, type ElementwiseOptions } from "./elementwise.ts";

const ADD: Elementwise = {
  name: "add",
  inputs: ["a", "b"],
  outputs: [{ name: "out", value: () => "a[i] + b[i]" }],
};
/** grad (+)= dout, run with `accumulate` (overwriting is a copy). */
const ACCUMULATE: Elementwise = {
  name: "add_accumulate",
  inputs: ["dout"],
  outputs: [{ name: "grad", value: () => "dout[i]" }],
};

// Labels nest their inputs' labels. A residual stream adds x to f(x), whose label holds x's
// again: unbounded, the label would grow 4× per GPT-2 block (~1e9 characters at 12 layers).
const MAX_LABEL = 120;

function sumLabel(a: string, b: string): string {
  const label = `${a}+${b}`;
  if (label.length <= MAX_LABEL) return label;
  const half = MAX_LABEL / 2 - 1;
  return `${label.slice(0, half)}…${label.slice(-half)}`;
}

/** out = a + b for tensors of the same shape. */
export function add(tape: Tape, a: Tensor, b: Tensor, opts: ElementwiseOptions = {}): Tensor {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new ShapeError(`add: shapes of ${a} and ${b} differ`);
  }
  if (a.dtype !== "f32" || b.dtype !== "f32") throw new ShapeError(`add: ${a} + ${b} must be f32`);
  const engine = tape.engine;
  const out = tape.tensor(a.shape, sumLabel(a.label, b.label));
  tape.record({
    name: "add",
    inputs: [a, b],
    outputs: [out],
    forward: elementwise(engine, "add", ADD, [a, b, out], opts),
    backward: (ctx) => {
      const dout = ctx.gradOutput(0);
      const commands: Command[] = [];
      for (const i of [0, 1]) {
        const target = ctx.gradInput(i);
        if (!target) continue;
        const label = `add backward to ${i === 0 ? a.label : b.label}`;
        if (!target.accumulate) {
          commands.push({ kind: "copy", label, src: dout, dst: target.tensor });
          continue;
        }
        commands.push(
          ...elementwise(engine, label, ACCUMULATE, [dout, target.tensor], {
            ...opts,
            accumulate: [true],
          }),
        );
      }
      return commands;
    },
  });
  return out;
}
