// The epilogue both matmul kernel families share: each invocation's register tile acc_<i>_<j>
// (rows row0 + i, columns col0 + 4j .. +3) goes to the block's output for batch z, with the bias
// added and, when the block accumulates, what is there.
import type { Binding } from "../engine/bindings.ts";
import { type Block, isVec4Layout } from "./matmul_plan.ts";

/** The output's and the bias's bindings, which follow the kernel's operands. */
export function epilogueBindings(block: Block): Binding[] {
  const out: Binding = ["out", "rw", `array<${isVec4Layout(block.out) ? "vec4f" : "f32"}>`];
  return block.bias ? [out, ["bias", "read", "array<f32>"]] : [out];
}

/** Stores the tile, as `epilogueBindings` declare the output and bias. */
export function epilogueWgsl(block: Block, tm: number, tn4: number): string {
  const out = block.out;
  const vec = isVec4Layout(out);
  const lines = [`  let out_base = z * ${out.batchStride}u;`];
  for (let j = 0; j < tn4; j++) {
    lines.push(
      block.bias
        ? `  let bias_${j} = vec4f(load_bias(col0 + ${4 * j}u), load_bias(col0 + ${
          4 * j + 1
        }u), load_bias(col0 + ${4 * j + 2}u), load_bias(col0 + ${4 * j + 3}u));`
        : `  let bias_${j} = vec4f(0.0);`,
    );
  }
  for (let i = 0; i < tm; i++) {
    lines.push(`  if (row0 + ${i}u < ${block.M}u) {`);
    lines.push(`    let out_row = out_base + (row0 + ${i}u) * ${out.ld}u;`);
    for (let j = 0; j < tn4; j++) {
      const col = `col0 + ${4 * j}u`;
      const value = `acc_${i}_${j} + bias_${j}`;
      if (vec) {
        const index = `(out_row + ${col}) / 4u`;
        const stored = block.accumulate ? `out[${index}] + ${value}` : value;
        lines.push(`    if (${col} < ${block.N}u) { out[${index}] = ${stored}; }`);
      } else {
        for (let e = 0; e < 4; e++) {
          const index = `out_row + ${col} + ${e}u`;
          const v = `(${value})[${e}]`;
          const stored = block.accumulate ? `out[${index}] + ${v}` : v;
          lines.push(`    if (${col} + ${e}u < ${block.N}u) { out[${index}] = ${stored}; }`);
        }
      }
    }
    lines.push(`  }`);
  }
  return lines.join("\n");
}

/** Module-scope WGSL the epilogue needs: the bias load, zero past the block's columns. */
export function epilogueFunctions(block: Block): string {
  return block.bias
    ? `fn load_bias(n: u32) -> f32 { return select(0.0, bias[n], n < ${block.N}u); }`
    : "";
}
