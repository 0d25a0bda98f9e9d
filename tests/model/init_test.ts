// GPT-2's from-scratch initialisation: shapes of the Hugging Face layout, the same bits for the
// same seed, and each group's statistics (N(0, 0.02) matrices, N(0, 0.02/√(2L)) residual
// projections, zero biases, unit LayerNorm weights).
import { assert, assertEquals } from "../assert.ts";
import { type GPT2Config, parameterShapes } from "../../model/config.ts";
import { INIT_STD, initWeights, residualStd } from "../../model/init.ts";

// The reference config of the issue: 5.3M parameters, enough samples for tight statistics.
const CONFIG: GPT2Config = {
  n_layer: 4,
  n_head: 4,
  n_embd: 256,
  vocab_size: 8192,
  n_positions: 128,
  layer_norm_epsilon: 1e-5,
};

// The smallest group (4 × 256² = 262k residual attn.c_proj samples) has a sample std within
// ~0.14% (1/√(2n)) of the truth; 2% allows for a broken generator only.
const STD_RTOL = 0.02;
// |mean| of n samples is ~std/√n; 5 standard errors.
const MEAN_SIGMAS = 5;

function stats(arrays: Float32Array[]): { n: number; mean: number; std: number } {
  let n = 0, sum = 0, sumSq = 0;
  for (const a of arrays) {
    for (let i = 0; i < a.length; i++) {
      sum += a[i];
      sumSq += a[i] * a[i];
    }
    n += a.length;
  }
  const mean = sum / n;
  return { n, mean, std: Math.sqrt(sumSq / n - mean * mean) };
}

function group(weights: Map<string, Float32Array>, pattern: RegExp): Float32Array[] {
  const found = [...weights].filter(([name]) => pattern.test(name)).map(([, data]) => data);
  assert(found.length > 0, `no tensor matches ${pattern}`);
  return found;
}

Deno.test("initWeights gives every tensor of the layout its shape", () => {
  const weights = initWeights(CONFIG, 1);
  const shapes = parameterShapes(CONFIG);
  assertEquals([...weights.keys()], [...shapes.keys()]);
  for (const [name, shape] of shapes) {
    assertEquals(weights.get(name)!.length, shape.reduce((a, b) => a * b, 1), name);
  }
});

Deno.test("initWeights is deterministic from the seed", () => {
  const small = { ...CONFIG, n_layer: 2, n_embd: 32, vocab_size: 101 };
  const a = initWeights(small, 7), b = initWeights(small, 7), c = initWeights(small, 8);
  for (const [name, data] of a) assertEquals(data, b.get(name)!, name);
  assert(
    a.get("wte.weight")!.some((v, i) => v !== c.get("wte.weight")![i]),
    "another seed gives other weights",
  );
});

Deno.test("initWeights draws each group with GPT-2's standard deviation", () => {
  const weights = initWeights(CONFIG, 1234);
  const groups: [string, RegExp, number][] = [
    ["wte", /^wte\.weight$/, INIT_STD],
    ["wpe", /^wpe\.weight$/, INIT_STD],
    ["c_attn", /\.attn\.c_attn\.weight$/, INIT_STD],
    ["c_fc", /\.mlp\.c_fc\.weight$/, INIT_STD],
    ["attn.c_proj", /\.attn\.c_proj\.weight$/, residualStd(CONFIG.n_layer)],
    ["mlp.c_proj", /\.mlp\.c_proj\.weight$/, residualStd(CONFIG.n_layer)],
  ];
  assert(Math.abs(residualStd(4) - 0.02 / Math.sqrt(8)) < 1e-15, "residual std formula");
  for (const [what, pattern, target] of groups) {
    const { n, mean, std } = stats(group(weights, pattern));
    assert(
      Math.abs(std - target) <= STD_RTOL * target,
      `${what}: std ${std} vs target ${target}`,
    );
    assert(
      Math.abs(mean) <= MEAN_SIGMAS * target / Math.sqrt(n),
      `${what}: mean ${mean} over ${n} samples`,
    );
  }
  // A normal puts 4.6% of its mass beyond 2σ; a uniform with that std puts none.
  const wte = weights.get("wte.weight")!;
  let tail = 0;
  for (let i = 0; i < wte.length; i++) if (Math.abs(wte[i]) > 2 * INIT_STD) tail++;
  const fraction = tail / wte.length;
  assert(Math.abs(fraction - 0.0455) < 0.002, `wte: ${fraction} of samples beyond 2σ`);
});

Deno.test("initWeights zeroes biases and sets LayerNorm weights to 1", () => {
  const weights = initWeights(CONFIG, 5);
  for (const [name, data] of weights) {
    if (name.endsWith(".bias")) assert(data.every((v) => v === 0), `${name} is not zero`);
    if (/ln_(\d|f)\.weight$/.test(name)) assert(data.every((v) => v === 1), `${name} is not 1`);
  }
  assertEquals(group(weights, /\.bias$/).length, 6 * CONFIG.n_layer + 1);
  assertEquals(group(weights, /ln_(\d|f)\.weight$/).length, 2 * CONFIG.n_layer + 1);
});
