// Initialisations for training from scratch, deterministic from the seed, as Hugging Face's
// PreTrainedModel classes do them. GPT-2 (GPT2PreTrainedModel, nanoGPT): every weight matrix
// N(0, 0.02), the two residual projections of each block (attn.c_proj, mlp.c_proj)
// N(0, 0.02/√(2·n_layer)) so the residual stream's variance does not grow with depth, biases 0,
// LayerNorm weights 1 and biases 0. The Llama family (LlamaPreTrainedModel): every weight matrix
// and the embeddings N(0, initializer_range = 0.02), biases 0, RMSNorm weights 1.
import { type BaseConfig, baseParameterShapes, isLlama } from "./base.ts";
import { type GPT2Config, parameterShapes } from "./config.ts";
import { Mulberry32 } from "./rng.ts";

/** Standard deviation of every weight matrix. */
export const INIT_STD = 0.02;

/** The standard deviation of the residual projections for `nLayer` blocks. */
export function residualStd(nLayer: number): number {
  return INIT_STD / Math.sqrt(2 * nLayer);
}

/** Fresh weights under their canonical Hugging Face names, in `parameterShapes` order. */
export function initWeights(config: GPT2Config, seed: number): Map<string, Float32Array> {
  const normal = new NormalSource(seed);
  const weights = new Map<string, Float32Array>();
  for (const [name, shape] of parameterShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (/\.ln_\d\.weight$|^ln_f\.weight$/.test(name)) data.fill(1);
    else if (name.endsWith(".weight")) {
      const residual = /\.(attn|mlp)\.c_proj\.weight$/.test(name);
      normal.fill(data, residual ? residualStd(config.n_layer) : INIT_STD);
    }
    // Biases (and LayerNorm biases) stay 0.
    weights.set(name, data);
  }
  return weights;
}

/** Fresh weights of `config`'s family (see the header). */
export function initBaseWeights(config: BaseConfig, seed: number): Map<string, Float32Array> {
  if (!isLlama(config)) return initWeights(config as GPT2Config, seed);
  const normal = new NormalSource(seed);
  const weights = new Map<string, Float32Array>();
  for (const [name, shape] of baseParameterShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (/layernorm\.weight$|^model\.norm\.weight$/.test(name)) data.fill(1);
    else if (name.endsWith(".weight")) normal.fill(data, INIT_STD);
    weights.set(name, data);
  }
  return weights;
}

/** N(0, 1) samples from mulberry32 through Box-Muller, both outputs of each pair used. */
export class NormalSource {
  readonly #rng: Mulberry32;

  constructor(seed: number) {
    this.#rng = new Mulberry32(seed);
  }

  /** Uniform in (0, 1]: never 0, so the logarithm below stays finite. */
  uniform(): number {
    return (this.#rng.nextUint32() + 1) / 4294967296;
  }

  /** Fills `out` with N(0, std²) samples (plain loop: 124M values must take seconds at most). */
  fill(out: Float32Array, std: number): void {
    for (let i = 0; i < out.length; i += 2) {
      const radius = std * Math.sqrt(-2 * Math.log(this.uniform()));
      const angle = 2 * Math.PI * this.uniform();
      out[i] = radius * Math.cos(angle);
      if (i + 1 < out.length) out[i + 1] = radius * Math.sin(angle);
    }
  }
}
