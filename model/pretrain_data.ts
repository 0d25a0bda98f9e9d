// Token streams and batches for pretraining. Documents are encoded one by one and concatenated,
// each followed by the tokenizer's end-of-text id (so every document boundary is marked).
// Training batches are B windows of T+1 tokens at offsets drawn with a seeded PRNG whose state
// is one 32-bit integer (saved in checkpoints, so a resumed run draws the same batches).
// Held-out evaluation covers every token of its stream: consecutive non-overlapping windows of
// T targets; the last partial window is included, padded, with its padding positions ignored.
import { Mulberry32 } from "./rng.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** The documents' token ids, each document followed by `eotId`. */
export function tokenStream(tokenizer: Tokenizer, texts: Iterable<string>): Uint32Array {
  const chunks: number[][] = [];
  let length = 0;
  for (const text of texts) {
    const ids = tokenizer.encode(text);
    ids.push(tokenizer.eotId);
    chunks.push(ids);
    length += ids.length;
  }
  const stream = new Uint32Array(length);
  let at = 0;
  for (const ids of chunks) {
    stream.set(ids, at);
    at += ids.length;
  }
  return stream;
}

/** Random training windows of T+1 tokens from `stream`, reproducible from the PRNG state. */
export class BatchSampler {
  readonly rng: Mulberry32;

  constructor(
    readonly stream: Uint32Array,
    readonly B: number,
    readonly T: number,
    rngState: number,
  ) {
    if (stream.length < T + 1) {
      throw new RangeError(
        `the training stream has ${stream.length} tokens, fewer than T+1=${T + 1}`,
      );
    }
    this.rng = new Mulberry32(rngState);
  }

  /** B sequences of T+1 ids, each starting at a uniformly drawn offset. */
  next(): number[][] {
    const starts = this.stream.length - this.T; // offsets 0 .. length − T − 1
    return Array.from({ length: this.B }, () => {
      const start = Math.floor(this.rng.next() * starts);
      return Array.from(this.stream.subarray(start, start + this.T + 1));
    });
  }
}

/** Evaluation windows: `sequences` to feed, and how many leading targets of each count. */
export interface EvalWindow {
  ids: number[];
  targets: number;
}

/**
 * Every target of `stream` (all ids but the first) exactly once, in windows of T+1 ids that
 * overlap by one; the last window is padded with `padId` and counts only its real targets.
 */
export function evalWindows(stream: Uint32Array, T: number, padId: number): EvalWindow[] {
  const windows: EvalWindow[] = [];
  for (let start = 0; start + 1 < stream.length; start += T) {
    const ids = Array.from(stream.subarray(start, start + T + 1));
    const targets = ids.length - 1;
    while (ids.length < T + 1) ids.push(padId);
    windows.push({ ids, targets });
  }
  return windows;
}

/** `windows` in groups of B; the last group is filled with empty windows (no targets). */
export function evalBatches(windows: readonly EvalWindow[], B: number, T: number): EvalWindow[][] {
  const batches: EvalWindow[][] = [];
  for (let i = 0; i < windows.length; i += B) {
    const batch = windows.slice(i, i + B);
    const padId = windows[0].ids[0];
    while (batch.length < B) batch.push({ ids: new Array(T + 1).fill(padId), targets: 0 });
    batches.push(batch);
  }
  return batches;
}
