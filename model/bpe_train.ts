// Trains a small byte-level BPE (a few thousand tokens) in GPT-2's formats.
// Texts are split with GPT-2's pre-tokenizer and identical pieces counted once ("words" with a
// frequency). Every word starts as its bytes; each step merges the most frequent adjacent pair
// everywhere (left to right, non-overlapping) into a new token, until the vocabulary is full.
// Ties go to the pair whose left token's bytes come first lexicographically, then the right's.
// A merge never recreates an existing token: between two boundaries that survive, a substring
// is segmented the same way in every word, so a string never arises from two different splits.
// That is what lets the encoder, applying merges by rank, reproduce training's segmentation.
// Counts are updated incrementally: pair → count, pair → words that (may) contain it, and a lazy
// max-heap of (count, pair) entries that are skipped when popped if the count has since changed.
import {
  type BpeTables,
  BpeTokenizer,
  BYTE_CHARS,
  BYTE_ORDER,
  EOT,
  GPT2_SPLIT,
  Heap,
} from "./bpe.ts";
import { writeFileAtomic } from "./safetensors.ts";

/** Pair keys are left · 2^16 + right, so ids (and the vocabulary) stay below 2^16. */
const KEY = 1 << 16;
const MIN_VOCAB = BYTE_ORDER.length + 1;

interface Candidate {
  count: number;
  left: number;
  right: number;
}

export function trainBpe(texts: Iterable<string>, vocabSize: number): BpeTables {
  if (!Number.isInteger(vocabSize) || vocabSize < MIN_VOCAB || vocabSize > KEY) {
    throw new RangeError(`vocabSize must be an integer in ${MIN_VOCAB}..${KEY}, got ${vocabSize}`);
  }
  // Each token as a string of char codes = its bytes, so `<` compares tokens bytewise.
  const tokens = BYTE_ORDER.map((b) => String.fromCharCode(b));
  const pairs = new PairCounts(countPieces(texts), tokens);
  const merges: [number, number][] = [];
  while (tokens.length < vocabSize - 1) {
    const best = pairs.best();
    if (best === undefined) {
      throw new Error(
        `the texts allow only ${merges.length} merges; vocabSize ${vocabSize} needs ` +
          `${vocabSize - MIN_VOCAB}`,
      );
    }
    const id = tokens.push(tokens[best.left] + tokens[best.right]) - 1;
    merges.push([best.left, best.right]);
    pairs.merge(best.left, best.right, id);
  }
  const spelled = tokens.map((token) =>
    Array.from(token, (c) => BYTE_CHARS[c.charCodeAt(0)]).join("")
  );
  return {
    vocab: [...spelled, EOT],
    merges: merges.map(([left, right]) => [spelled[left], spelled[right]]),
  };
}

/** How often each piece of GPT-2's pre-tokenizer occurs in `texts`. */
function countPieces(texts: Iterable<string>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const text of texts) {
    for (const [piece] of text.matchAll(GPT2_SPLIT)) {
      counts.set(piece, (counts.get(piece) ?? 0) + 1);
    }
  }
  return counts;
}

/** The distinct pieces as token ids ("words", with frequencies) and their adjacent-pair counts. */
class PairCounts {
  readonly #words: number[][];
  readonly #frequencies: number[];
  /** pair key → occurrences, weighted by word frequency; pairs that vanished are deleted */
  readonly #counts = new Map<number, number>();
  /** pair key → the words that contain it, or once did (stale words are skipped on use) */
  readonly #wordsWith = new Map<number, Set<number>>();
  readonly #heap: Heap<Candidate>;

  /** `tokens` (bytes as char codes, by id) is read live: the caller appends merged tokens. */
  constructor(pieceCounts: Map<string, number>, tokens: readonly string[]) {
    const byteIds: number[] = [];
    for (const [id, b] of BYTE_ORDER.entries()) byteIds[b] = id;
    const utf8 = new TextEncoder();
    this.#words = [...pieceCounts.keys()].map((piece) =>
      Array.from(utf8.encode(piece), (b) => byteIds[b])
    );
    this.#frequencies = [...pieceCounts.values()];
    this.#heap = new Heap<Candidate>((a, b) =>
      a.count !== b.count
        ? a.count > b.count
        : tokens[a.left] !== tokens[b.left]
        ? tokens[a.left] < tokens[b.left]
        : tokens[a.right] < tokens[b.right]
    );
    for (const [w, word] of this.#words.entries()) {
      for (let i = 0; i + 1 < word.length; i++) {
        const key = word[i] * KEY + word[i + 1];
        this.#counts.set(key, (this.#counts.get(key) ?? 0) + this.#frequencies[w]);
        this.#index(key, w);
      }
    }
    for (const [key, count] of this.#counts) this.#offer(key, count);
  }

  /** The most frequent pair (ties as the header says), or undefined when no pair is left. */
  best(): Candidate | undefined {
    for (let top = this.#heap.pop(); top !== undefined; top = this.#heap.pop()) {
      if (this.#counts.get(top.left * KEY + top.right) === top.count) return top;
    }
    return undefined;
  }

  /** Replaces (left, right) by `merged` in every word, updating the counts of changed pairs. */
  merge(left: number, right: number, merged: number): void {
    const key = left * KEY + right;
    const deltas = new Map<number, number>();
    const recount = (word: number[], by: number) => {
      for (let i = 0; i + 1 < word.length; i++) {
        const pair = word[i] * KEY + word[i + 1];
        deltas.set(pair, (deltas.get(pair) ?? 0) + by);
      }
    };
    for (const w of this.#wordsWith.get(key)!) {
      const before = this.#words[w];
      const after = mergePair(before, left, right, merged);
      if (after === before) continue; // a stale index entry: this word lost the pair earlier
      recount(before, -this.#frequencies[w]);
      recount(after, this.#frequencies[w]);
      this.#words[w] = after;
      // Pairs without the new token were in the word before, so only these need indexing.
      for (let i = 0; i + 1 < after.length; i++) {
        if (after[i] === merged || after[i + 1] === merged) {
          this.#index(after[i] * KEY + after[i + 1], w);
        }
      }
    }
    this.#wordsWith.delete(key);
    for (const [pair, delta] of deltas) {
      if (delta === 0) continue;
      const count = (this.#counts.get(pair) ?? 0) + delta;
      if (count === 0) this.#counts.delete(pair);
      else {
        this.#counts.set(pair, count);
        this.#offer(pair, count);
      }
    }
  }

  #index(key: number, word: number): void {
    const words = this.#wordsWith.get(key);
    if (words === undefined) this.#wordsWith.set(key, new Set([word]));
    else words.add(word);
  }

  /** Every count change pushes an entry; older entries for the pair go stale and are skipped. */
  #offer(key: number, count: number): void {
    this.#heap.push({ count, left: Math.floor(key / KEY), right: key % KEY });
  }
}

/** `word` with every (left, right), scanned left to right, replaced by `merged`; itself if none. */
function mergePair(word: number[], left: number, right: number, merged: number): number[] {
  let out: number[] | undefined;
  for (let i = 0; i < word.length; i++) {
    if (i + 1 < word.length && word[i] === left && word[i + 1] === right) {
      out ??= word.slice(0, i);
      out.push(merged);
      i++;
    } else out?.push(word[i]);
  }
  return out ?? word;
}

/** Writes vocab.json and merges.txt into `dir` (created if missing), each atomically. */
export async function saveBpe(dir: string, tables: BpeTables): Promise<void> {
  // Refuse to write files the loader would reject.
  BpeTokenizer.fromTables(tables, dir);
  const vocabJson = `{\n${
    tables.vocab.map((token, id) => `  ${JSON.stringify(token)}: ${id}`).join(",\n")
  }\n}\n`;
  const mergesTxt = ["#version: 0.2", ...tables.merges.map((pair) => pair.join(" ")), ""].join(
    "\n",
  );
  const utf8 = new TextEncoder();
  await Deno.mkdir(dir, { recursive: true });
  await writeFileAtomic(`${dir}/vocab.json`, utf8.encode(vocabJson));
  await writeFileAtomic(`${dir}/merges.txt`, utf8.encode(mergesTxt));
}
