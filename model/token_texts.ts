// Each token's share of a decoded text, for showing text token by token (the routing page).
// Decoding ids one at a time would break a character whose UTF-8 bytes span tokens (byte-level
// BPE splits many non-ASCII characters) into U+FFFD pieces; the tokenizer's streaming decoder
// holds such bytes back until the character is complete.
import type { Tokenizer } from "./tokenizer_contract.ts";

/**
 * Per id, the text it completes: joined, they equal `tokenizer.decode(ids)`. A token holding only
 * the first bytes of a character gets "" (the token completing it gets the character); bytes
 * still incomplete after the last id go to the last token, as U+FFFD.
 */
export function tokenTexts(tokenizer: Tokenizer, ids: ArrayLike<number>): string[] {
  const decoder = tokenizer.decoder();
  const texts = Array.from(ids, (id) => decoder.push(id));
  if (texts.length) texts[texts.length - 1] += decoder.end();
  return texts;
}
