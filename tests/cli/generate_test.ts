// `deno task generate` end to end on a tiny random model (its own BPE, 2 layers, 16 positions):
// a seed fixes the text; greedy output equals argmax computed step by step through GPT2 here
// (proving the padding, the last-row read and the sliding window); bad flags end in one clear
// message with exit code 2, not a stack trace.
import { assert, assertEquals } from "../assert.ts";
import { Tape } from "../../engine/tape.ts";
import { type BaseCheckpoint, saveBaseCheckpoint } from "../../model/checkpoint.ts";
import { type GPT2Config, parameterShapes } from "../../model/config.ts";
import { GPT2 } from "../../model/gpt2.ts";
import { TokenBatch } from "../../model/batch.ts";
import { saveBpe, trainBpe } from "../../model/bpe_train.ts";
import { loadTokenizer } from "../../model/tokenizer.ts";
import { gpuTest, Rng } from "../util.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

const TEXTS = [
  "The quick brown fox jumps over the lazy dog.",
  "A journey of a thousand miles begins with a single step.",
  "The rain in Spain stays mainly in the plain.",
  "To be or not to be, that is the question.",
  "Café, naïve, déjà vu: words with accents and a snowman ☃.",
];

/** A random GPT-2 small enough to run in a blink; n_positions 16 so windows must slide. */
async function tinyModel(): Promise<{ dir: string; config: GPT2Config } & BaseCheckpoint> {
  const dir = await Deno.makeTempDir({ prefix: "generate_test" });
  globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
  const bpe = trainBpe(TEXTS, 300);
  await saveBpe(dir, bpe);
  const config: GPT2Config = {
    n_layer: 2,
    n_head: 2,
    n_embd: 32,
    vocab_size: bpe.vocab.length,
    n_positions: 16,
    layer_norm_epsilon: 1e-5,
  };
  const rng = new Rng(1234);
  const weights = new Map<string, Float32Array>();
  for (const [name, shape] of parameterShapes(config)) {
    const size = shape.reduce((a, b) => a * b, 1);
    // LayerNorm gains near 1; everything else large enough that logits are far from uniform
    // (so greedy has clear winners and sampling is not a coin toss over 300 ids).
    const isGain = /ln_\w+\.weight$/.test(name);
    const values = rng.normal(size, isGain ? 0.1 : 0.3);
    weights.set(name, Float32Array.from(values, (v) => isGain ? 1 + v : v));
  }
  const checkpoint = { config, weights };
  await saveBaseCheckpoint(dir, checkpoint);
  return { dir, ...checkpoint };
}

let model: ReturnType<typeof tinyModel> | undefined;
const sharedModel = () => model ??= tinyModel();

async function generate(args: string[]) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}cli/generate.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code, stdout: text.decode(stdout), stderr: text.decode(stderr) };
}

/** Runs the CLI and insists it succeeded. */
async function generateOk(args: string[]): Promise<{ stdout: string; stderr: string }> {
  const { dir } = await sharedModel();
  const result = await generate(["--model", dir, ...args]);
  assertEquals(result.code, 0, result.stderr);
  return result;
}

Deno.test({
  name: "generate: the same seed gives the same text, another seed another text",
  sanitizeResources: false,
  fn: async () => {
    const args = ["--prompt", "The quick", "--max-tokens", "24", "--temperature", "1"];
    const first = await generateOk([...args, "--seed", "5"]);
    const again = await generateOk([...args, "--seed", "5"]);
    const other = await generateOk([...args, "--seed", "6"]);
    assertEquals(again.stdout, first.stdout);
    assert(other.stdout !== first.stdout, `seeds 5 and 6 both gave ${first.stdout}`);
    assert(first.stdout.endsWith("\n") && first.stdout.length > 1, first.stdout);
    const rate = first.stderr.match(/24 tokens in [\d.]+ s \(([\d.]+) tokens\/s; context 16\)/);
    assert(rate, `no tokens/s line in: ${first.stderr}`);
    console.log(`tiny model: ${rate[1]} tokens/s`);
  },
});

/** Greedy decoding through GPT2 directly: the full logits read back, the row picked here. */
gpuTest("generate: greedy output equals step-by-step argmax through GPT2", async (engine) => {
  const { dir, config, weights } = await sharedModel();
  const tokenizer = await loadTokenizer(dir, config.vocab_size);
  const gpt2 = new GPT2(engine, config, weights);
  const V = config.vocab_size;
  const cases: [string, number][] = [
    ["To be", 6], // context 8 > everything fed: no sliding
    ["The rain", 20], // the window fills, then slides for the last tokens
    [TEXTS.join(" "), 5], // the prompt alone is longer than n_positions: its tail is kept
  ];
  for (const [prompt, maxTokens] of cases) {
    const tokens = tokenizer.encode(prompt);
    const T = Math.min(config.n_positions, tokens.length + maxTokens);
    const batch = new TokenBatch(engine, config, 1, T);
    const tape = new Tape(engine);
    const { logits } = gpt2.forward(tape, batch);
    const forward = tape.forward();
    const generated: number[] = [];
    for (let step = 0; step < maxTokens; step++) {
      const window = tokens.slice(-T);
      // Padded with another id than the CLI's 0: under causal attention it must not matter.
      const padding = new Array<number>(T + 1 - window.length).fill(7);
      batch.set([[...window, ...padding]]);
      await engine.run(forward);
      const all = await engine.readF32(logits);
      const row = all.subarray((window.length - 1) * V, window.length * V);
      let best = 0;
      for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
      tokens.push(best);
      generated.push(best);
    }
    tape.dispose();
    batch.dispose();
    const { stdout } = await generateOk([
      "--prompt",
      prompt,
      "--max-tokens",
      `${maxTokens}`,
      "--temperature",
      "0",
    ]);
    assertEquals(stdout, prompt + tokenizer.decode(generated) + "\n", `prompt "${prompt}"`);
  }
  gpt2.dispose();
});

Deno.test("generate: bad flags end in one clear message and exit code 2", async () => {
  const { dir } = await sharedModel();
  const m = ["--model", dir];
  const p = ["--prompt", "hi"];
  const cases: [string[], string][] = [
    [p, "--model is required"],
    [m, "--prompt is required"],
    [[...m, "--prompt", ""], "--prompt must be non-empty"],
    [[...m, ...p, "--max-tokens", "many"], '--max-tokens must be an integer, got "many"'],
    [[...m, ...p, "--max-tokens=-3"], "--max-tokens must be an integer ≥ 0, got -3"],
    [[...m, ...p, "--max-tokens", "2.5"], "--max-tokens must be an integer ≥ 0"],
    [[...m, ...p, "--temperature", "hot"], '--temperature must be a number, got "hot"'],
    [[...m, ...p, "--temperature=-0.5"], "--temperature must be a number ≥ 0"],
    [
      [...m, ...p, "--temperature", "-1"],
      "--temperature must be a number ≥ 0 (0 = greedy), got -1",
    ],
    [[...m, ...p, "--top-k", ""], '--top-k must be an integer, got ""'],
    [[...m, ...p, "--top-k", "1.5"], "--top-k must be an integer ≥ 0, got 1.5"],
    [[...m, ...p, "--seed", "4294967296"], "--seed must be an integer in 0..4294967295"],
    [[...m, ...p, "--bogus"], "Unknown option '--bogus'"],
  ];
  for (const [args, message] of cases) {
    const { code, stderr } = await generate(args);
    assertEquals(code, 2, `${args.join(" ")}: ${stderr}`);
    assert(stderr.includes(message), `"${message}" not in: ${stderr}`);
    assert(!stderr.includes("    at "), `stack trace printed for ${args.join(" ")}: ${stderr}`);
  }
  // A folder that is not a model is an input error too (exit 1, like `deno task grad`).
  const { code, stderr } = await generate(["--model", `${dir}/none`, ...p]);
  assertEquals(code, 1, stderr);
  assert(stderr.includes("cannot read") && !stderr.includes("    at "), stderr);
});
