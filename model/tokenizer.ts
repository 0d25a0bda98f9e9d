// The tokenizer a model uses, chosen by what lies beside it (interfaces.md): vocab.json +
// merges.txt (our byte-level BPE), or neither with vocab_size 50257 (GPT-2's own r50k_base
// through gpt-tokenizer). Both share one contract: `encode` treats its input as plain text, so
// the literal characters "<|endoftext|>" encode as ordinary tokens and never as `eotId`; callers
// insert `eotId` themselves (between documents). This keeps user text from smuggling in control
// tokens. Decoding `eotId` gives the text "<|endoftext|>".
import { type BaseConfig, dimsOf, isLlama } from "./base.ts";
import { BpeTokenizer, EOT, TokenBytes } from "./bpe.ts";
import { fileExists } from "./file_exists.ts";
import { loadHfTokenizer } from "./hf_tokenizer.ts";
import { type TextStream, type Tokenizer, TokenizerError } from "./tokenizer_contract.ts";

export { type TextStream, type Tokenizer, TokenizerError };

/** The vocabulary size that, without tokenizer files, means GPT-2's own encoding. */
export const R50K_VOCAB_SIZE = 50257;

/** The tokenizer for the model in `modelDir`, whose config.json says `vocabSize`. */
export async function loadTokenizer(modelDir: string, vocabSize: number): Promise<Tokenizer> {
  const vocabPath = `${modelDir}/vocab.json`;
  const mergesPath = `${modelDir}/merges.txt`;
  const [hasVocab, hasMerges] = await Promise.all([fileExists(vocabPath), fileExists(mergesPath)]);
  if (hasVocab !== hasMerges) {
    const [present, absent] = hasVocab ? [vocabPath, mergesPath] : [mergesPath, vocabPath];
    throw new TokenizerError(modelDir, `found ${present} but not ${absent}; a BPE needs both`);
  }
  const tokenizer = hasVocab
    ? await BpeTokenizer.load(modelDir)
    : await r50kOrFail(modelDir, vocabSize);
  if (tokenizer.vocabSize !== vocabSize) {
    throw new TokenizerError(
      modelDir,
      `the tokenizer has ${tokenizer.vocabSize} tokens but config.json says vocab_size ${vocabSize}`,
    );
  }
  return tokenizer;
}

/**
 * The tokenizer beside a base model of either family: Hugging Face's tokenizer.json when there
 * is one (the Llama family's, model/hf_tokenizer.ts; its end-of-text and begin ids from the
 * config when tokenizer_config.json names none), else as loadTokenizer finds it.
 */
export async function loadModelTokenizer(modelDir: string, config: BaseConfig): Promise<Tokenizer> {
  const { vocab } = dimsOf(config);
  if (!await fileExists(`${modelDir}/tokenizer.json`)) return await loadTokenizer(modelDir, vocab);
  return await loadHfTokenizer(modelDir, {
    vocabSize: vocab,
    ...isLlama(config) ? { eosTokenId: config.eos_token_id, bosTokenId: config.bos_token_id } : {},
  });
}

async function r50kOrFail(modelDir: string, vocabSize: number): Promise<Tokenizer> {
  if (vocabSize !== R50K_VOCAB_SIZE) {
    throw new TokenizerError(
      modelDir,
      `no vocab.json + merges.txt, and vocab_size ${vocabSize} is not GPT-2's ${R50K_VOCAB_SIZE}`,
    );
  }
  return await r50kTokenizer();
}

let r50k: Promise<Tokenizer> | undefined;

/** GPT-2's encoding. Imported on first use: its tables are large and most models bring their own. */
export function r50kTokenizer(): Promise<Tokenizer> {
  r50k ??= (async () => {
    const [{ encode }, { default: ranks }] = await Promise.all([
      import("gpt-tokenizer/encoding/r50k_base"),
      import("gpt-tokenizer/bpeRanks/r50k_base"),
    ]);
    // The ranks table holds each token's text, or its bytes when those are not valid UTF-8.
    const utf8 = new TextEncoder();
    const bytes = ranks.map((t) => typeof t === "string" ? utf8.encode(t) : Uint8Array.from(t));
    const tokenBytes = new TokenBytes([...bytes, utf8.encode(EOT)]);
    // An empty disallowed set makes gpt-tokenizer encode "<|endoftext|>" as text instead of
    // throwing (its default); no special token is allowed, so eotId never comes out.
    const plainText = { disallowedSpecial: new Set<string>() };
    return {
      vocabSize: tokenBytes.size,
      eotId: tokenBytes.size - 1,
      encode: (text: string) => encode(text, plainText),
      decode: (ids: readonly number[]) => tokenBytes.decode(ids),
      decoder: () => tokenBytes.stream(),
    };
  })();
  return r50k;
}
