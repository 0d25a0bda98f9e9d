// The rotary frequencies against a float64 re-derivation of Llama 3's scaling: Meta's original
// loop (llama-models' apply_scaling), which Hugging Face's _compute_llama3_parameters vectorises.
import { ropeInverseFrequencies, type RopeScaling } from "../../kernels/rope_frequencies.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { assertClose } from "../util.ts";

/** Meta's apply_scaling, element by element, on the unscaled frequencies. */
function metaApplyScaling(frequencies: Float64Array, scaling: Required<RopeScaling>) {
  const lowWavelength = scaling.original_max_position_embeddings / scaling.low_freq_factor;
  const highWavelength = scaling.original_max_position_embeddings / scaling.high_freq_factor;
  return frequencies.map((freq) => {
    const wavelength = 2 * Math.PI / freq;
    if (wavelength < highWavelength) return freq;
    if (wavelength > lowWavelength) return freq / scaling.factor;
    const smooth = (scaling.original_max_position_embeddings / wavelength -
      scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor);
    return (1 - smooth) * freq / scaling.factor + smooth * freq;
  });
}

/** θ^(−2i/D) computed as exp(−(2i/D)·ln θ): the same numbers by another route. */
function unscaled(headDim: number, theta: number): Float64Array {
  return Float64Array.from(
    { length: headDim / 2 },
    (_, i) => Math.exp(-2 * i / headDim * Math.log(theta)),
  );
}

// exp∘log and pow round differently by a few ulps.
const ULPS = { atol: 0, rtol: 1e-14 };

// Llama 3.2 1B/3B and Llama 3.1 8B's config.json values.
const llama32: Required<RopeScaling> = {
  rope_type: "llama3",
  type: "llama3",
  factor: 32,
  low_freq_factor: 1,
  high_freq_factor: 4,
  original_max_position_embeddings: 8192,
};
const llama31 = { ...llama32, factor: 8 };

Deno.test("rope frequencies without scaling are θ^(−2i/D) (SmolLM2, Qwen2.5, TinyLlama)", () => {
  for (const [headDim, theta] of [[64, 10000], [64, 100000], [128, 1000000], [2, 10000], [6, 7]]) {
    const got = ropeInverseFrequencies(headDim, theta);
    assertEquals(got.length, headDim / 2);
    assertEquals(got[0], 1);
    assertClose(got, unscaled(headDim, theta), ULPS, `D=${headDim}, θ=${theta}`);
    assertEquals(ropeInverseFrequencies(headDim, theta, null), got);
    assertEquals(ropeInverseFrequencies(headDim, theta, { rope_type: "default" }), got);
  }
});

Deno.test("llama3 rope scaling matches Meta's apply_scaling (Llama 3.2, Llama 3.1)", () => {
  for (const [headDim, scaling] of [[64, llama32], [128, llama32], [128, llama31]] as const) {
    const got = ropeInverseFrequencies(headDim, 500000, scaling);
    const expected = metaApplyScaling(unscaled(headDim, 500000), scaling);
    assertClose(got, expected, ULPS, `D=${headDim}, factor ${scaling.factor}`);
  }
});

Deno.test("llama3 rope scaling keeps high, divides low and blends the medium band", () => {
  const headDim = 64;
  const base = ropeInverseFrequencies(headDim, 500000);
  const scaled = ropeInverseFrequencies(headDim, 500000, llama32);
  const ratio = Array.from(scaled, (f, i) => f / base[i]);
  const bands = { high: 0, medium: 0, low: 0 };
  for (let i = 0; i < ratio.length; i++) {
    const wavelength = 2 * Math.PI / base[i];
    if (wavelength < 8192 / 4) {
      bands.high++;
      assertEquals(scaled[i], base[i], `high-frequency ${i} unchanged`);
    } else if (wavelength > 8192) {
      bands.low++;
      assertEquals(scaled[i], base[i] / 32, `low-frequency ${i} divided by the factor`);
    } else {
      bands.medium++;
      assert(ratio[i] > 1 / 32 && ratio[i] < 1, `medium ${i}: ratio ${ratio[i]} in (1/32, 1)`);
    }
    if (i > 0) assert(ratio[i] <= ratio[i - 1], `ratio falls with the wavelength (${i})`);
  }
  // Llama 3.2 at head size 64: every band is populated.
  assertEquals(bands, { high: 15, medium: 3, low: 14 });
  // The older "type" key names the scaling too.
  const { rope_type: _, ...legacy } = llama32;
  assertEquals(ropeInverseFrequencies(headDim, 500000, legacy), scaled);
});

Deno.test("rope frequencies reject what they cannot compute, with the field named", () => {
  const bad: [() => unknown, string][] = [
    [() => ropeInverseFrequencies(63, 10000), "must be a positive even integer"],
    [() => ropeInverseFrequencies(0, 10000), "must be a positive even integer"],
    [() => ropeInverseFrequencies(64, 0), "rope_theta 0"],
    [() => ropeInverseFrequencies(64, 1e4, { rope_type: "yarn", factor: 4 }), `"yarn" is not`],
    [
      () => ropeInverseFrequencies(64, 1e4, { ...llama32, factor: undefined }),
      "rope_scaling.factor",
    ],
    [
      () => ropeInverseFrequencies(64, 1e4, { ...llama32, low_freq_factor: 4 }),
      "must exceed low_freq_factor",
    ],
    [
      () => ropeInverseFrequencies(64, 1e4, { ...llama32, original_max_position_embeddings: -1 }),
      "original_max_position_embeddings must be a positive number",
    ],
  ];
  for (const [call, message] of bad) assertThrows(call, RangeError, message);
});
