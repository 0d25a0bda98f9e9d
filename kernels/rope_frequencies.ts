// Rotary embedding frequencies as Hugging Face computes them from a Llama / Qwen2 config.json
// (`rope_theta`, `rope_scaling`), in float64:
//   default: f_i = θ^(−2i/D), i < D/2                      (_compute_default_rope_parameters)
//   llama3:  with λ_i = 2π/f_i, L = original_max_position_embeddings,
//            λ_i < L/high_freq_factor:  f_i unchanged         (high frequencies)
//            λ_i > L/low_freq_factor:   f_i / factor          (low frequencies)
//            otherwise s = (L/λ_i − low_freq_factor)/(high_freq_factor − low_freq_factor),
//                      f_i·((1 − s)/factor + s)               (_compute_llama3_parameters)
// Both have attention scaling 1 (HF's `attention_factor`), so cos and sin are used as they are.
// HF evaluates these (and the angles t·f_i) in float32; float64 here differs by ~1e-7 relative,
// well inside what f32 training resolves, and matches a float64 reference exactly.

/** `rope_scaling` of a Hugging Face config.json (null or absent: none). */
export interface RopeScaling {
  rope_type?: string;
  /** The older spelling of rope_type. */
  type?: string;
  factor?: number;
  low_freq_factor?: number;
  high_freq_factor?: number;
  original_max_position_embeddings?: number;
}

/** The D/2 inverse frequencies of rotary embeddings with head size D (float64). */
export function ropeInverseFrequencies(
  headDim: number,
  theta: number,
  scaling?: RopeScaling | null,
): Float64Array {
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) {
    throw new RangeError(`rope: head size ${headDim} must be a positive even integer`);
  }
  if (!(theta > 0 && Number.isFinite(theta))) {
    throw new RangeError(`rope: rope_theta ${theta} must be a positive number`);
  }
  const frequencies = Float64Array.from(
    { length: headDim / 2 },
    (_, i) => 1 / theta ** (2 * i / headDim),
  );
  const type = scaling?.rope_type ?? scaling?.type ?? "default";
  if (type === "default") return frequencies;
  if (type !== "llama3") {
    throw new RangeError(
      `rope: rope_scaling type "${type}" is not supported; use "llama3" or no rope_scaling`,
    );
  }
  const field = (name: keyof RopeScaling): number => {
    const value = scaling![name];
    if (typeof value !== "number" || !(value > 0) || !Number.isFinite(value)) {
      throw new RangeError(`rope: rope_scaling.${name} must be a positive number, got ${value}`);
    }
    return value;
  };
  const factor = field("factor");
  const low = field("low_freq_factor");
  const high = field("high_freq_factor");
  const oldContext = field("original_max_position_embeddings");
  if (!(high > low)) {
    throw new RangeError(
      `rope: rope_scaling.high_freq_factor ${high} must exceed low_freq_factor ${low}`,
    );
  }
  const lowFreqWavelength = oldContext / low;
  const highFreqWavelength = oldContext / high;
  return frequencies.map((f) => {
    const wavelength = 2 * Math.PI / f;
    // HF's torch.where sequence: divide the low band, then replace the medium band.
    const divided = wavelength > lowFreqWavelength ? f / factor : f;
    const medium = !(wavelength < highFreqWavelength) && !(wavelength > lowFreqWavelength);
    if (!medium) return divided;
    const smooth = (oldContext / wavelength - low) / (high - low);
    return (1 - smooth) * divided / factor + smooth * divided;
  });
}
