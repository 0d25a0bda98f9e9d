// Hugging Face `tokenizer.json` (the BPE of Llama 2/3, TinyLlama, SmolLM2, Qwen2) through
// @huggingface/tokenizers, Hugging Face's own pure-JavaScript port (no native code; runs in Deno
// and in browsers), behind our Tokenizer contract (tokenizer.ts):
// - `encode` takes its input as plain text: no BOS is added, and the spellings of special tokens
//   ("<|end_of_text|>", "</s>") encode as ordinary text, as the Rust library does with
//   `encode_special_tokens`. For that the library gets the file without its special added tokens
//   (non-special ones, such as Qwen3's <think>, still match as the Rust library matches them).
// - `decode` is the Rust library's `decode(ids, skip_special_tokens=False)`; ids that include a
//   special token are decoded by a second instance that knows them, built on first need.
// - `decoder()` streams as the Rust library's DecodeStream does: it re-decodes a short window of
//   recent ids and holds text back while it ends in U+FFFD (a character still incomplete).
// Known answers recorded from the Rust library (scripts/make_test_tokenizers.py) pin all three;
// the two places where the JavaScript port departs from Rust are patched in hf_tokenizer_compat.ts.
import { Tokenizer as LibraryTokenizer } from "@huggingface/tokenizers";
import { useRustByteFallback, withUnicodeDigits } from "./hf_tokenizer_compat.ts";
import { type TextStream, type Tokenizer, TokenizerError } from "./tokenizer_contract.ts";

export interface HfTokenizer extends Tokenizer {
  /** The token a sequence starts with (tokenizer_config.json's bos_token), or null if none. */
  readonly bosId: number | null;
}

export interface HfTokenizerOptions {
  /** config.json's vocab_size: every id the tokenizer can produce must be below it. */
  vocabSize: number;
  /** config.json's ids, used when tokenizer_config.json names no eos_token / bos_token. */
  eosTokenId?: number | null;
  bosTokenId?: number | null;
}

interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
}

/** A tokenizer from the texts of tokenizer.json and (optionally) tokenizer_config.json. */
export function parseHfTokenizer(
  tokenizerJson: string,
  tokenizerConfigJson: string | undefined,
  source: string,
  options: HfTokenizerOptions,
): HfTokenizer {
  const fail = (message: string): never => {
    throw new TokenizerError(source, message);
  };
  const json = parseObject(tokenizerJson, `${source}/tokenizer.json`);
  const config = tokenizerConfigJson === undefined
    ? {}
    : parseObject(tokenizerConfigJson, `${source}/tokenizer_config.json`);
  const model = json.model as { type?: unknown; vocab?: unknown } | undefined;
  if (typeof model !== "object" || model === null) fail('tokenizer.json has no "model" object');
  if (model!.type !== "BPE") {
    fail(
      `tokenizer.json's model type ${JSON.stringify(model!.type)} is not supported ` +
        "(Llama-family tokenizers are BPE)",
    );
  }
  const vocab = model!.vocab;
  if (typeof vocab !== "object" || vocab === null || Array.isArray(vocab)) {
    fail("tokenizer.json's model.vocab is not an object of token ids");
  }
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added) || added.some((t) => !Number.isSafeInteger(t?.id))) {
    fail("tokenizer.json's added_tokens is not a list of {id, content} tokens");
  }
  const addedTokens = added as AddedTokenJson[];
  const ids = [...Object.values(vocab as Record<string, unknown>), ...addedTokens.map((t) => t.id)];
  if (ids.some((id) => !Number.isSafeInteger(id) || (id as number) < 0)) {
    fail("tokenizer.json has a token id that is not a non-negative integer");
  }
  const size = (ids as number[]).reduce((max, id) => Math.max(max, id), -1) + 1;
  if (size > options.vocabSize) {
    fail(
      `the tokenizer has token ids up to ${size - 1}, but config.json says vocab_size ` +
        `${options.vocabSize}: this tokenizer.json does not belong to this model`,
    );
  }

  const build = (tokenizer: Record<string, unknown>): LibraryTokenizer => {
    let built: LibraryTokenizer;
    try {
      built = new LibraryTokenizer(withUnicodeDigits(tokenizer), config);
    } catch (e) {
      return fail(`@huggingface/tokenizers cannot read tokenizer.json: ${(e as Error).message}`);
    }
    useRustByteFallback(built);
    return built;
  };
  const specialIds = new Set(addedTokens.filter((t) => t.special).map((t) => t.id));
  const plain = build({ ...json, added_tokens: addedTokens.filter((t) => !t.special) });
  let full: LibraryTokenizer | undefined;
  const idOf = (key: "eos_token" | "bos_token", fallback: number | null | undefined) => {
    const entry = config[key];
    const token = typeof entry === "object" && entry !== null
      ? (entry as { content?: unknown }).content
      : entry;
    if (token === undefined || token === null) return fallback ?? null;
    const id = typeof token === "string" ? tokenId(json, addedTokens, token) : undefined;
    if (id === undefined) {
      fail(`tokenizer_config.json's ${key} ${JSON.stringify(token)} is not in tokenizer.json`);
    }
    return id!;
  };
  const eotId = idOf("eos_token", options.eosTokenId);
  if (eotId === null) {
    fail(
      "no end-of-text token: tokenizer_config.json names no eos_token, config.json no eos_token_id",
    );
  }
  for (const [what, id] of [["eos", eotId], ["bos", idOf("bos_token", options.bosTokenId)]]) {
    if (id !== null && !((id as number) < size)) {
      fail(`the ${what} token id ${id} is not one of the tokenizer's ${size} ids`);
    }
  }

  const decode = (ids: readonly number[]): string => {
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= size) {
        throw new RangeError(`token id ${id} is not in 0..${size - 1}`);
      }
    }
    if (ids.length === 0) return ""; // the library refuses an empty list
    const decoder = ids.some((id) => specialIds.has(id)) ? (full ??= build(json)) : plain;
    return decoder.decode([...ids], { clean_up_tokenization_spaces: false });
  };
  return {
    vocabSize: size,
    eotId: eotId!,
    bosId: idOf("bos_token", options.bosTokenId),
    encode(text: string): number[] {
      if (text === "") return [];
      const encoded = plain.encode(text, { add_special_tokens: false });
      const missing = encoded.ids.findIndex((id) => id === undefined);
      if (missing >= 0) {
        fail(`cannot encode ${JSON.stringify(encoded.tokens[missing])}: no id and no unk_token`);
      }
      return encoded.ids;
    },
    decode,
    decoder: () => decodeStream(decode, source),
  };
}

/** The tokenizer of the model folder `dir` (tokenizer.json, tokenizer_config.json if present). */
export async function loadHfTokenizer(
  dir: string,
  options: HfTokenizerOptions,
): Promise<HfTokenizer> {
  const tokenizerJson = await readText(`${dir}/tokenizer.json`);
  const configJson = await readText(`${dir}/tokenizer_config.json`, true);
  return parseHfTokenizer(tokenizerJson!, configJson, dir, options);
}

async function readText(path: string, optional = false): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (optional && e instanceof Deno.errors.NotFound) return undefined;
    throw new TokenizerError(path, `cannot read (${(e as Error).message})`);
  }
}

function parseObject(text: string, source: string): Record<string, unknown> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new TokenizerError(source, `is not valid JSON (${(e as Error).message})`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new TokenizerError(source, "is not a JSON object");
  }
  return json as Record<string, unknown>;
}

function tokenId(
  json: Record<string, unknown>,
  added: AddedTokenJson[],
  token: string,
): number | undefined {
  const addedId = added.find((t) => t.content === token)?.id;
  return addedId ?? ((json.model as { vocab: Record<string, number> }).vocab[token]);
}

/**
 * The Rust library's DecodeStream: decode a window of ids that starts one emitted step back,
 * emit what extends the window's previous text, and hold back while the text ends in U+FFFD.
 * The window keeps context for decoders that depend on it (SentencePiece's leading-space strip).
 */
function decodeStream(decode: (ids: readonly number[]) => string, source: string): TextStream {
  let ids: number[] = [];
  let prefix = "";
  let prefixIndex = 0;
  const extension = (text: string): string => {
    if (!text.startsWith(prefix)) {
      throw new TokenizerError(source, "streaming decode: the text of earlier tokens changed");
    }
    return text.slice(prefix.length);
  };
  return {
    push(id: number): string {
      ids.push(id);
      const text = decode(ids);
      if (text.length <= prefix.length || text.endsWith("\uFFFD")) return "";
      const piece = extension(text);
      const nextPrefixIndex = ids.length - prefixIndex;
      ids = ids.slice(prefixIndex);
      prefix = decode(ids);
      prefixIndex = nextPrefixIndex;
      return piece;
    },
    end(): string {
      const text = decode(ids);
      return text.length > prefix.length ? extension(text) : "";
    },
  };
}
