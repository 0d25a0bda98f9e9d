// `deno task generate`: continues a prompt with a base model, streaming the text as it comes.
// The engine's graphs are static-shape, so ONE inference graph is built for B=1 and a fixed T:
// each step writes the current tokens left-aligned (the tail padded with token 0, which causal
// attention keeps from influencing earlier positions), replays the graph, and reads back only
// the logits row of the last real token. Once T tokens are in context the window slides.
import { Engine } from "../engine/device.ts";
import { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { loadBaseCheckpoint } from "../model/checkpoint.ts";
import { GPT2, GPT2Batch } from "../model/gpt2.ts";
import { mulberry32, sampleToken } from "../model/sample.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { type FlagSpec, helpText, parseFlags, runMain, UsageError } from "./args.ts";

const USAGE = 'deno task generate --model DIR --prompt "TEXT" [--max-tokens N] ' +
  "[--temperature T] [--top-k K] [--seed S]";
const FLAGS: FlagSpec = {
  model: {
    type: "string",
    help: "base model folder (config.json + model.safetensors + tokenizer)",
  },
  prompt: { type: "string", help: "the text to continue (non-empty)" },
  "max-tokens": { type: "string", help: "tokens to generate: an integer ≥ 0 (default 64)" },
  temperature: { type: "string", help: "a number ≥ 0; 0 = greedy (default 1.0)" },
  "top-k": {
    type: "string",
    help: "sample among the K likeliest: an integer ≥ 0; 0 = off (default 40)",
  },
  seed: { type: "string", help: "random seed: an integer in 0..4294967295 (default 0)" },
  help: { type: "boolean", help: "show this help" },
};

interface GenerateOptions {
  maxTokens: number;
  temperature: number;
  topK: number;
  seed: number;
}

/** A numeric flag's value, or its default; anything else is a UsageError naming what is allowed. */
function numberFlag(
  flags: Record<string, string | boolean | undefined>,
  name: string,
  fallback: number,
  allowed: { integer: boolean; max: number; description: string },
): number {
  const raw = flags[name];
  if (raw === undefined) return fallback;
  const value = typeof raw === "string" && raw.trim() !== "" ? Number(raw) : NaN;
  if (
    !Number.isFinite(value) || value < 0 || value > allowed.max ||
    (allowed.integer && !Number.isInteger(value))
  ) {
    throw new UsageError(`--${name} must be ${allowed.description}, got "${raw}"`);
  }
  return value;
}

function parseOptions(flags: Record<string, string | boolean | undefined>): GenerateOptions {
  const count = { integer: true, max: Infinity };
  return {
    maxTokens: numberFlag(flags, "max-tokens", 64, { ...count, description: "an integer ≥ 0" }),
    temperature: numberFlag(flags, "temperature", 1, {
      integer: false,
      max: Infinity,
      description: "a number ≥ 0 (0 = greedy)",
    }),
    topK: numberFlag(flags, "top-k", 40, { ...count, description: "an integer ≥ 0 (0 = off)" }),
    seed: numberFlag(flags, "seed", 0, {
      integer: true,
      max: 0xffffffff,
      description: "an integer in 0..4294967295",
    }),
  };
}

/** The graph's context length: room for prompt and continuation, up to the model's limit. */
function contextLength(nPositions: number, promptTokens: number, maxTokens: number): number {
  return Math.min(nPositions, promptTokens + maxTokens);
}

/**
 * Reads row `row` of a [rows, cols] f32 tensor. Views must start at a byte offset the adapter
 * can bind (engine.view), so this reads the smallest aligned span holding the row.
 */
async function readRow(engine: Engine, matrix: Tensor, row: number): Promise<Float32Array> {
  const cols = matrix.shape[matrix.shape.length - 1];
  const quantum = engine.limits.minStorageBufferOffsetAlignment / 4;
  const start = row * cols;
  const spanStart = start - (start % quantum);
  const span = engine.view(matrix, spanStart, [start + cols - spanStart], `${matrix.label} row`);
  return (await engine.readF32(span)).subarray(start - spanStart);
}

async function writeAll(text: string): Promise<void> {
  const bytes = new TextEncoder().encode(text);
  for (let done = 0; done < bytes.length;) done += await Deno.stdout.write(bytes.subarray(done));
}

async function main(): Promise<void> {
  const flags = parseFlags(Deno.args, FLAGS, USAGE);
  if (flags.help) return console.log(helpText(FLAGS, USAGE));
  for (const name of ["model", "prompt"]) {
    if (typeof flags[name] !== "string") {
      throw new UsageError(`--${name} is required\n\n${helpText(FLAGS, USAGE)}`);
    }
  }
  const prompt = flags.prompt as string;
  if (prompt === "") throw new UsageError("--prompt must be non-empty text");
  const options = parseOptions(flags);
  const modelDir = flags.model as string;
  const { config, weights } = await loadBaseCheckpoint(modelDir);
  const tokenizer = await loadTokenizer(modelDir, config.vocab_size);
  const tokens = tokenizer.encode(prompt);
  if (options.maxTokens === 0) return await writeAll("\n");
  const T = contextLength(config.n_positions, tokens.length, options.maxTokens);

  const engine = await Engine.create({ verbose: true });
  const model = new GPT2(engine, config, weights); // parameters stay frozen: inference only
  const batch = new GPT2Batch(engine, config, 1, T); // targets stay zero: valid, never read
  const tape = new Tape(engine);
  const { logits } = tape.noGrad(() => model.forward(tape, batch));
  const forward = tape.forward();

  const rng = mulberry32(options.seed);
  const decoder = tokenizer.decoder();
  const padded = new Array<number>(T).fill(0);
  const started = performance.now();
  for (let step = 0; step < options.maxTokens; step++) {
    // The last T tokens: the whole prompt's tail at first, then a window sliding by one.
    const window = tokens.slice(-T);
    padded.fill(0);
    window.forEach((id, t) => padded[t] = id);
    batch.ids.set(padded);
    await engine.run(forward, "generate");
    const row = await readRow(engine, logits, window.length - 1);
    const next = sampleToken(row, options, rng);
    tokens.push(next);
    await writeAll(decoder.push(next));
  }
  await writeAll(decoder.end() + "\n");
  const seconds = (performance.now() - started) / 1000;
  console.error(
    `${options.maxTokens} tokens in ${seconds.toFixed(2)} s ` +
      `(${(options.maxTokens / seconds).toFixed(1)} tokens/s; context ${T})`,
  );
  tape.dispose();
  batch.dispose();
  model.dispose();
  engine.destroy();
}

if (import.meta.main) await runMain(main);
