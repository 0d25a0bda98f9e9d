// Numbers written into WGSL. Two forms, for two needs:
// - `floatLiteral`: a decimal literal, for finite values in any expression, const declarations
//   included. The shader compiler rounds it to the nearest f32, as Math.fround does.
// - `f32BitsLiteral`: exactly the f32 with given bits, -0, ±∞ and NaN included (a decimal cannot
//   spell NaN or ∞, and "0.0" loses the sign of -0). It is a bitcast, which naga does not
//   evaluate in const expressions, so it belongs in a `let` inside a function.

/** A WGSL float literal for x (always with a point or exponent, so never an integer). */
export function floatLiteral(x: number): string {
  const text = String(x);
  return /[.e]/.test(text) ? text : `${text}.0`;
}

/** The bits of `value` rounded to f32. */
export function f32Bits(value: number): number {
  return new Uint32Array(Float32Array.of(value).buffer)[0];
}

/** A WGSL expression for exactly this f32 (including -0, ±∞ and NaN), by its bits. */
export function f32BitsLiteral(value: number): string {
  return `bitcast<f32>(0x${f32Bits(value).toString(16)}u)`;
}
