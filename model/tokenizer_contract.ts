// What every tokenizer of a model offers (our byte-level BPE, GPT-2's r50k_base, Hugging Face
// tokenizer.json files): text to ids and back, and a streaming decoder for generation.

export interface Tokenizer {
  readonly vocabSize: number;
  readonly eotId: number;
  encode(text: string): number[];
  /** Invalid UTF-8 (e.g. a cut-off multi-byte character) decodes to U+FFFD. */
  decode(ids: readonly number[]): string;
  /** A decoder for generation, fed one id at a time. */
  decoder(): TextStream;
}

/** Streaming decode: the text of everything pushed so far, in pieces. */
export interface TextStream {
  /** The newly completed text; bytes of a multi-byte character still incomplete are held back. */
  push(id: number): string;
  /** Whatever is held back (as U+FFFD), so that all pieces joined equal `decode(ids)`. */
  end(): string;
}

export class TokenizerError extends Error {
  constructor(source: string, message: string) {
    super(`${source}: ${message}`);
    this.name = "TokenizerError";
  }
}
