// Byte-level BPE in Hugging Face's GPT-2 file formats, read and validated, and used to encode.
// - vocab.json: {"token": id, ...}; tokens are spelled in GPT-2's byte alphabet (each byte as one
//   printable character, `BYTE_CHARS`); ids are exactly 0..V-1 and the last is "<|endoftext|>".
// - merges.txt: an optional "#version: ..." line, then one "left right" merge per line, best
//   (lowest rank) first.
// Encoding splits text with GPT-2's pre-tokenizer regex, then within each piece repeatedly merges
// the adjacent pair of lowest rank (leftmost first on ties), as GPT-2, tiktoken and Hugging Face
// do. Pieces never merge across each other, so their encodings are cached.
import { type TextStream, type Tokenizer, TokenizerError } from "./tokenizer_contract.ts";

export const EOT = "<|endoftext|>";

/** GPT-2's pre-tokenizer, with JavaScript's \s and \p classes (as gpt-tokenizer has it). */
export const GPT2_SPLIT =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

const printable = (b: number) =>
  (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
/** GPT-2's byte order: the printable bytes, then the rest (ids 0..255 of GPT-2's vocabulary). */
export const BYTE_ORDER: readonly number[] = [
  ...[...Array(256).keys()].filter(printable),
  ...[...Array(256).keys()].filter((b) => !printable(b)),
];
/** GPT-2's bytes_to_unicode: printable bytes spell themselves, the rest U+0100 onwards. */
export const BYTE_CHARS: readonly string[] = (() => {
  const chars: string[] = [];
  let shifted = 0x100;
  for (const b of BYTE_ORDER) chars[b] = String.fromCharCode(printable(b) ? b : shifted++);
  return chars;
})();

/** A vocabulary (token strings by id, EOT last) and its merges (by rank), as in the files. */
export interface BpeTables {
  vocab: string[];
  merges: [string, string][];
}

/** A binary heap; `before(a, b)` says a comes out first. */
export class Heap<T> {
  #items: T[] = [];
  constructor(private readonly before: (a: T, b: T) => boolean) {}

  get size(): number {
    return this.#items.length;
  }

  push(item: T): void {
    const items = this.#items;
    let i = items.push(item) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(item, items[parent])) break;
      items[i] = items[parent];
      i = parent;
    }
    items[i] = item;
  }

  pop(): T | undefined {
    const items = this.#items;
    const top = items[0];
    const last = items.pop();
    if (items.length === 0 || last === undefined) return top;
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= items.length) break;
      if (child + 1 < items.length && this.before(items[child + 1], items[child])) child++;
      if (!this.before(items[child], last)) break;
      items[i] = items[child];
      i = child;
    }
    items[i] = last;
    return top;
  }
}

/** The bytes each token id stands for: decoding, whole or streamed, for any byte-level BPE. */
export class TokenBytes {
  constructor(private readonly tokens: readonly Uint8Array[]) {}

  get size(): number {
    return this.tokens.length;
  }

  decode(ids: readonly number[]): string {
    const parts = ids.map((id) => this.#bytesOf(id));
    const all = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
    let offset = 0;
    for (const part of parts) {
      all.set(part, offset);
      offset += part.length;
    }
    return utf8Decoder().decode(all);
  }

  stream(): TextStream {
    // TextDecoder's stream mode holds back an incomplete multi-byte sequence until it completes.
    const decoder = utf8Decoder();
    return {
      push: (id) => decoder.decode(this.#bytesOf(id), { stream: true }),
      end: () => decoder.decode(),
    };
  }

  #bytesOf(id: number): Uint8Array {
    const bytes = this.tokens[id];
    if (bytes === undefined) {
      throw new RangeError(`token id ${id} is not in 0..${this.tokens.length - 1}`);
    }
    return bytes;
  }
}

/** ignoreBOM: a leading U+FEFF is text like any other, not a marker to drop. */
const utf8Decoder = () => new TextDecoder("utf-8", { ignoreBOM: true });

/** Entries kept in the piece → ids cache before it is cleared (bounds memory on endless text). */
const CACHE_LIMIT = 1 << 17;
/** Merge candidates are keyed rank · 2^32 + position: exact in a double for any real input. */
const POSITIONS = 2 ** 32;

export class BpeTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly eotId: number;
  readonly #bytes: TokenBytes;
  /** byte → id of its one-byte token */
  readonly #byteIds = new Int32Array(256);
  /** left id · vocabSize + right id → rank */
  readonly #ranks = new Map<number, number>();
  /** rank → id of the merged token */
  readonly #mergedIds: Int32Array;
  readonly #cache = new Map<string, number[]>();
  readonly #utf8 = new TextEncoder();

  private constructor({ vocab, merges }: BpeTables, source: string) {
    const fail = (message: string): never => {
      throw new TokenizerError(source, message);
    };
    this.vocabSize = vocab.length;
    this.eotId = vocab.length - 1;
    if (vocab.length === 0) fail("the vocabulary is empty");
    if (vocab[this.eotId] !== EOT) {
      fail(`the last id (${this.eotId}) must be "${EOT}", found ${JSON.stringify(vocab.at(-1))}`);
    }
    const ids = new Map<string, number>();
    for (const [id, token] of vocab.entries()) {
      if (token === "") fail(`id ${id} is the empty string`);
      const other = ids.get(token);
      if (other !== undefined) fail(`${JSON.stringify(token)} has two ids, ${other} and ${id}`);
      ids.set(token, id);
    }
    const byteOf = new Map(BYTE_CHARS.map((char, b) => [char, b]));
    this.#bytes = new TokenBytes(vocab.map((token, id) => {
      if (id === this.eotId) return this.#utf8.encode(EOT);
      return Uint8Array.from(token, (char) => {
        const b = byteOf.get(char);
        return b ?? fail(
          `${JSON.stringify(token)} (id ${id}) has ${JSON.stringify(char)}, ` +
            `which is not in GPT-2's byte alphabet`,
        );
      });
    }));
    for (const [b, char] of BYTE_CHARS.entries()) {
      this.#byteIds[b] = ids.get(char) ??
        fail(`no token for byte 0x${b.toString(16).padStart(2, "0")} ("${char}")`);
    }
    this.#mergedIds = new Int32Array(merges.length);
    for (const [rank, [left, right]] of merges.entries()) {
      const where = `merge ${rank + 1} "${left} ${right}"`;
      const pair = [left, right, left + right].map((token) => {
        const id = ids.get(token);
        if (id === undefined) fail(`${where}: ${JSON.stringify(token)} is not in the vocabulary`);
        if (id === this.eotId) fail(`${where}: "${EOT}" cannot take part in merges`);
        return id!;
      });
      const key = pair[0] * this.vocabSize + pair[1];
      if (this.#ranks.has(key)) fail(`${where} repeats merge ${this.#ranks.get(key)! + 1}`);
      this.#ranks.set(key, rank);
      this.#mergedIds[rank] = pair[2];
    }
  }

  /** A tokenizer from in-memory tables, validated like files (`source` names them in errors). */
  static fromTables(tables: BpeTables, source: string): BpeTokenizer {
    return new BpeTokenizer(tables, source);
  }

  /** A tokenizer from the texts of vocab.json and merges.txt. */
  static parse(vocabJson: string, mergesTxt: string, source: string): BpeTokenizer {
    return new BpeTokenizer({
      vocab: parseVocab(vocabJson, `${source}/vocab.json`),
      merges: parseMerges(mergesTxt, `${source}/merges.txt`),
    }, source);
  }

  /** The tokenizer in `dir`'s vocab.json and merges.txt. */
  static async load(dir: string): Promise<BpeTokenizer> {
    // One after the other, so that with both files missing the error always names vocab.json.
    const vocabJson = await readText(`${dir}/vocab.json`);
    const mergesTxt = await readText(`${dir}/merges.txt`);
    return BpeTokenizer.parse(vocabJson, mergesTxt, dir);
  }

  encode(text: string): number[] {
    const ids: number[] = [];
    for (const [piece] of text.matchAll(GPT2_SPLIT)) {
      let pieceIds = this.#cache.get(piece);
      if (pieceIds === undefined) {
        pieceIds = this.#mergePiece(this.#utf8.encode(piece));
        if (this.#cache.size >= CACHE_LIMIT) this.#cache.clear();
        this.#cache.set(piece, pieceIds);
      }
      for (const id of pieceIds) ids.push(id);
    }
    return ids;
  }

  decode(ids: readonly number[]): string {
    return this.#bytes.decode(ids);
  }

  decoder(): TextStream {
    return this.#bytes.stream();
  }

  /**
   * One piece's bytes (never empty) merged by rank. The symbols form a linked list and the candidate pairs a
   * heap (lowest rank, then leftmost), so even a piece of thousands of bytes (a long run of
   * spaces or of CJK text) costs O(n log n); entries made stale by a merge are skipped when popped.
   */
  #mergePiece(bytes: Uint8Array): number[] {
    const n = bytes.length;
    const symbols = Int32Array.from(bytes, (b) => this.#byteIds[b]);
    const next = Int32Array.from(symbols, (_, i) => i + 1 < n ? i + 1 : -1);
    const prev = Int32Array.from(symbols, (_, i) => i - 1);
    const rankAt = (i: number) => {
      const j = next[i];
      return j < 0 ? undefined : this.#ranks.get(symbols[i] * this.vocabSize + symbols[j]);
    };
    const candidates = new Heap<number>((a, b) => a < b);
    const consider = (i: number) => {
      const rank = rankAt(i);
      if (rank !== undefined) candidates.push(rank * POSITIONS + i);
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    while (candidates.size > 0) {
      const key = candidates.pop()!;
      const rank = Math.floor(key / POSITIONS);
      const i = key - rank * POSITIONS;
      // Stale: i was absorbed by its left neighbour (-1), or its pair changed since the push.
      if (symbols[i] < 0 || rankAt(i) !== rank) continue;
      const j = next[i];
      symbols[i] = this.#mergedIds[rank];
      symbols[j] = -1;
      next[i] = next[j];
      if (next[j] >= 0) prev[next[j]] = i;
      if (prev[i] >= 0) consider(prev[i]);
      consider(i);
    }
    const ids: number[] = [];
    for (let i = 0; i >= 0; i = next[i]) ids.push(symbols[i]);
    return ids;
  }
}

async function readText(path: string): Promise<string> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new TokenizerError(path, `cannot read (${(e as Error).message})`);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new TokenizerError(path, "is not valid UTF-8");
  }
}

/** vocab.json as token strings by id, or an error naming what is wrong. */
function parseVocab(text: string, source: string): string[] {
  const fail = (message: string): never => {
    throw new TokenizerError(source, message);
  };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    fail(`is not valid JSON (${(e as Error).message})`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    return fail('must be a JSON object {"token": id, ...}');
  }
  const entries = Object.entries(parsed);
  const vocab: string[] = new Array(entries.length);
  for (const [token, id] of entries) {
    if (!Number.isInteger(id) || id < 0 || id >= entries.length) {
      fail(
        `${JSON.stringify(token)} has id ${JSON.stringify(id)}; ids must be 0..${
          entries.length - 1
        }`,
      );
    }
    if (vocab[id] !== undefined) {
      fail(`id ${id} belongs to both ${JSON.stringify(vocab[id])} and ${JSON.stringify(token)}`);
    }
    vocab[id] = token;
  }
  return vocab;
}

/** merges.txt as pairs by rank, or an error naming the bad line. */
function parseMerges(text: string, source: string): [string, string][] {
  const lines = text.split("\n").map((line) => line.endsWith("\r") ? line.slice(0, -1) : line);
  while (lines.at(-1) === "") lines.pop();
  const first = lines[0]?.startsWith("#version") ? 1 : 0;
  return lines.slice(first).map((line, i) => {
    const parts = line.split(" ");
    if (parts.length !== 2 || parts[0] === "" || parts[1] === "") {
      throw new TokenizerError(
        source,
        `line ${first + i + 1}: expected "left right", found ${JSON.stringify(line)}`,
      );
    }
    return parts as [string, string];
  });
}
