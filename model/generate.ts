// Continuing a prompt with a base model, token by token. The engine's graphs are static-shape,
// so ONE inference graph is built for B=1 and a fixed T: each step writes the current tokens
// left-aligned (the tail padded with token 0, which causal attention keeps from influencing
// earlier positions), replays the graph, and reads back only the logits row of the last real
// token. Once T tokens are in context the window slides.
import type { Engine } from "../engine/device.ts";
import { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { roundDown, viewAlignment } from "../kernels/chunks.ts";
import { dimsOf } from "./base.ts";
import type { BaseModel } from "./base_model.ts";
import { TokenBatch } from "./batch.ts";
import { checkInteger, checkReal } from "./option_error.ts";
import { Mulberry32 } from "./rng.ts";
import { sampleToken } from "./sample.ts";
import type { Tokenizer } from "./tokenizer.ts";

export interface GenerateOptions {
  /** Tokens to generate. */
  maxTokens: number;
  /** Divides the logits before the softmax; 0 means greedy. */
  temperature: number;
  /** Sample among the k likeliest; 0 keeps all. */
  topK: number;
  seed: number;
}

export const GENERATE_DEFAULTS: GenerateOptions = {
  maxTokens: 64,
  temperature: 1,
  topK: 40,
  seed: 0,
};

/** One generated token: its id and the text it completes (UTF-8 may span tokens). */
export interface GeneratedToken {
  id: number;
  text: string;
}

/** Checks every option (OptionError names the first bad one). */
export function checkGenerateOptions(options: GenerateOptions): void {
  checkInteger("maxTokens", options.maxTokens, 0);
  checkReal("temperature", options.temperature, (x) => x >= 0, "≥ 0 (0 = greedy)");
  checkInteger("topK", options.topK, 0);
  checkInteger("seed", options.seed, 0, 2 ** 32 - 1);
}

/**
 * The continuation of `prompt` (non-empty), one token at a time; the last token's text ends the
 * decoding. The GPU graph lives as long as the iteration (stopping early frees it too).
 */
export async function* generate(
  engine: Engine,
  model: BaseModel,
  tokenizer: Tokenizer,
  prompt: string,
  options: GenerateOptions,
): AsyncGenerator<GeneratedToken> {
  checkGenerateOptions(options);
  const tokens = tokenizer.encode(prompt);
  if (tokens.length === 0) throw new RangeError("generate: the prompt encodes to no tokens");
  if (options.maxTokens === 0) return;
  const T = contextLength(dimsOf(model.config).context, tokens.length, options.maxTokens);
  const batch = new TokenBatch(engine, model.config, 1, T); // targets stay zero: never read
  const tape = new Tape(engine);
  try {
    const { logits } = tape.noGrad(() => model.forward(tape, batch));
    const forward = tape.forward();
    const rng = new Mulberry32(options.seed);
    const decoder = tokenizer.decoder();
    const padded = new Array<number>(T).fill(0);
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
      const last = step === options.maxTokens - 1;
      yield { id: next, text: decoder.push(next) + (last ? decoder.end() : "") };
    }
  } finally {
    tape.dispose();
    batch.dispose();
  }
}

/** The graph's context: room for prompt and continuation, up to the model's limit. */
export function contextLength(nPositions: number, promptTokens: number, maxTokens: number) {
  return Math.min(nPositions, promptTokens + maxTokens);
}

/**
 * Reads row `row` of a [rows, cols] f32 tensor. Views must start at a byte offset the adapter
 * can bind (engine.view), so this reads the smallest aligned span holding the row.
 */
async function readRow(engine: Engine, matrix: Tensor, row: number): Promise<Float32Array> {
  const cols = matrix.shape[matrix.shape.length - 1];
  const start = row * cols;
  const spanStart = roundDown(start, viewAlignment(engine));
  const span = engine.view(matrix, spanStart, [start + cols - spanStart], `${matrix.label} row`);
  return (await engine.readF32(span)).subarray(start - spanStart);
}
