// Where @huggingface/tokenizers (0.2.0, pinned) departs from Hugging Face's Rust `tokenizers`,
// which wrote the files and is the reference, and how we bring it in line. Each departure was
// found by the known answers recorded from the Rust library (tests/golden/hf_tokenizers/); those
// tests fail again if an upgrade changes what is patched here.
// 1. The Digits pre-tokenizer (SmolLM2's) splits on JavaScript's `\d`, ASCII only; Rust splits on
//    `char::is_numeric`, the Unicode classes Nd, Nl and No (١٢٣, ½, ²). We hand the library the
//    equivalent Split: each `\p{N}` isolated (individual_digits), or each run `\p{N}+`.
// 2. The ByteFallback decoder (Llama 2's) decodes a run of <0xNN> tokens with a TextDecoder that
//    drops a leading byte-order mark, and turns invalid UTF-8 into one U+FFFD per maximal invalid
//    subsequence. Rust keeps the mark, and when the run is not valid UTF-8 it emits one U+FFFD per
//    byte token. We give that decoder step a byte decoder with Rust's behaviour.
import type { Tokenizer as LibraryTokenizer } from "@huggingface/tokenizers";

type Json = Record<string, unknown>;

/** tokenizer.json with Digits pre-tokenizers replaced by their Split equivalent (a copy). */
export function withUnicodeDigits(tokenizer: Json): Json {
  const rewrite = (step: unknown): unknown => {
    if (typeof step !== "object" || step === null) return step;
    const node = step as Json;
    if (node.type === "Digits") {
      const pattern = node.individual_digits ? "\\p{N}" : "\\p{N}+";
      return { type: "Split", pattern: { Regex: pattern }, behavior: "Isolated", invert: false };
    }
    if (node.type === "Sequence" && Array.isArray(node.pretokenizers)) {
      return { ...node, pretokenizers: node.pretokenizers.map(rewrite) };
    }
    return node;
  };
  return { ...tokenizer, pre_tokenizer: rewrite(tokenizer.pre_tokenizer) };
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Rust's ByteFallback on a run of bytes: its text if valid UTF-8, else U+FFFD per byte. */
const rustByteFallback = {
  decode(bytes: Uint8Array): string {
    try {
      return strictUtf8.decode(bytes);
    } catch {
      return "\uFFFD".repeat(bytes.length);
    }
  },
};

interface DecoderStep {
  config?: { type?: string };
  decoders?: DecoderStep[];
  text_decoder?: { decode(bytes: Uint8Array): string };
}

/** Gives every ByteFallback step of the tokenizer's decoder Rust's byte decoding. */
export function useRustByteFallback(tokenizer: LibraryTokenizer): void {
  const visit = (step: DecoderStep | null | undefined) => {
    if (!step) return;
    if (step.config?.type === "ByteFallback") {
      if (!step.text_decoder) {
        throw new Error("@huggingface/tokenizers' ByteFallback decoder changed: update this patch");
      }
      step.text_decoder = rustByteFallback;
    }
    step.decoders?.forEach(visit);
  };
  visit(tokenizer.decoder as DecoderStep | null);
}
