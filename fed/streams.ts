// A run's data as token streams: each category's documents tokenised, its training split capped
// for low-data clients (--train-tokens), and the pooled stream of centralized training.
import { OptionError } from "../model/option_error.ts";
import { tokenStream } from "../model/pretrain_data.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import type { TrainOptions } from "./options.ts";
import type { ClientCorpus } from "./scenarios.ts";

/** A category's data as token streams. */
export interface Streams {
  name: string;
  train: Uint32Array;
  val: Uint32Array;
  test: Uint32Array;
}

/** The token streams of a run's categories: its corpora tokenised, training splits capped. */
export function runStreams(
  options: TrainOptions,
  tokenizer: Tokenizer,
  corpora: readonly ClientCorpus[],
): Streams[] {
  return corpora.map((c, id) => ({
    name: c.name,
    train: capTrain(
      tokenStream(tokenizer, c.train),
      options.trainTokens[id],
      id,
      options.seq,
    ),
    val: tokenStream(tokenizer, c.val),
    test: tokenStream(tokenizer, c.test),
  }));
}

/** Every category's streams end to end, in category order: centralized training's data. */
export function pool(categories: readonly Streams[]): Streams {
  const concat = (parts: Uint32Array[]) => {
    const out = new Uint32Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  };
  return {
    name: "pooled",
    train: concat(categories.map((c) => c.train)),
    val: concat(categories.map((c) => c.val)),
    test: concat(categories.map((c) => c.test)),
  };
}

/** What summary.json says of each client's data. */
export function members(categories: readonly Streams[]): { name: string; trainTokens: number }[] {
  return categories.map((c) => ({ name: c.name, trainTokens: c.train.length }));
}

/** The first `cap` tokens of a training stream (low-data clients), checked to hold a window. */
function capTrain(stream: Uint32Array, cap: number | null, id: number, T: number): Uint32Array {
  const kept = cap === null ? stream : stream.subarray(0, cap);
  if (kept.length < T + 1) {
    throw new OptionError(
      "trainTokens",
      `leaves client ${id} ${kept.length} training tokens, fewer than one window of ${T} + 1 ` +
        `({seq} + 1); raise it`,
    );
  }
  return kept;
}
