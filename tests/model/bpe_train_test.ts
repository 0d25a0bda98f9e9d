import { assert, assertEquals, assertRejects, assertSameFile, assertThrows } from "../assert.ts";
import { Rng } from "../util.ts";
import {
  type BpeTables,
  BpeTokenizer,
  BYTE_CHARS,
  BYTE_ORDER,
  EOT,
  GPT2_SPLIT,
} from "../../model/bpe.ts";
import { TokenizerError } from "../../model/tokenizer_contract.ts";
import { saveBpe, trainBpe } from "../../model/bpe_train.ts";

const BYTE_TOKENS = BYTE_ORDER.map((b) => BYTE_CHARS[b]);

/** Pseudo-random prose with many distinct words, in several scripts, with digits and spacing. */
function corpus(seed: number, words: number): string[] {
  const rng = new Rng(seed);
  const syllables = [
    "the",
    "an",
    "ing",
    "qu",
    "er",
    "st",
    "o",
    "a",
    "ü",
    "ß",
    "é",
    "日本",
    "語",
    "ки",
    "ра",
    "🤖",
    "'s",
    "'ll",
    "x",
    "th",
    "re",
    "ion",
    "ch",
    "ly",
  ];
  const gaps = [" ", " ", " ", " ", ", ", ". ", ".\n", "  ", "\t", "\n\n", "; ", "!"];
  const pick = <T>(items: T[]) => items[Math.floor(rng.next() * items.length)];
  const texts: string[] = [];
  let text = "";
  for (let i = 0; i < words; i++) {
    const length = 1 + Math.floor(rng.next() * 3);
    for (let s = 0; s < length; s++) text += pick(syllables);
    if (rng.next() < 0.05) text += ` ${Math.floor(rng.next() * 2000)}`;
    text += pick(gaps);
    if (rng.next() < 0.01) {
      texts.push(text);
      text = "";
    }
  }
  return [...texts, text];
}

/** Training's own definition of a piece's tokens: each merge, in order, applied left to right. */
function applyMergesInOrder(piece: string, merges: [string, string][]): string[] {
  let symbols = Array.from(new TextEncoder().encode(piece), (b) => BYTE_CHARS[b]);
  for (const [left, right] of merges) {
    const merged: string[] = [];
    for (let i = 0; i < symbols.length; i++) {
      if (symbols[i] === left && symbols[i + 1] === right) merged.push(left + symbols[++i]);
      else merged.push(symbols[i]);
    }
    symbols = merged;
  }
  return symbols;
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("trainBpe: a hand-checkable corpus gives the merges worked out by hand", () => {
  // Pieces: "aaab" ×1, " aab" ×2 (Ġ is the space).
  // 1. pairs: a a ×4 (2 in "aaab", 1 in each " aab"), a b ×3, Ġ a ×2   → "a a"
  //    words: [aa a b] ×1, [Ġ aa b] ×2
  // 2. aa a ×1, a b ×1, Ġ aa ×2, aa b ×2; the tie at 2 goes to the left token " " < "aa" → "Ġ aa"
  //    words: [aa a b] ×1, [Ġaa b] ×2
  // 3. Ġaa b ×2 beats the rest                                          → "Ġaa b"
  // 4. aa a ×1 vs a b ×1: the left token "a" < "aa"                     → "a b"
  // 5. only aa ab is left                                               → "aa ab"
  const { vocab, merges } = trainBpe(["aaab aab aab"], 256 + 5 + 1);
  assertEquals(merges, [["a", "a"], ["Ġ", "aa"], ["Ġaa", "b"], ["a", "b"], ["aa", "ab"]]);
  assertEquals(vocab, [...BYTE_TOKENS, "aa", "Ġaa", "Ġaab", "ab", "aaab", EOT]);
  assertThrows(() => trainBpe(["aaab aab aab"], 256 + 6 + 1), Error, "allow only 5 merges");
});

Deno.test("trainBpe: exact size; bytes, then merged tokens in merge order, then EOT", () => {
  for (const vocabSize of [257, 600, 2048]) {
    const { vocab, merges } = trainBpe(corpus(1, 60_000), vocabSize);
    assertEquals(vocab.length, vocabSize);
    assertEquals(merges.length, vocabSize - 257);
    assertEquals(vocab.slice(0, 256), BYTE_TOKENS);
    assertEquals(vocab.at(-1), EOT);
    const ids = new Map(vocab.map((token, id) => [token, id]));
    assertEquals(ids.size, vocabSize, "tokens must be distinct");
    for (const [rank, [left, right]] of merges.entries()) {
      assertEquals(vocab[256 + rank], left + right);
      assert(ids.get(left)! < 256 + rank && ids.get(right)! < 256 + rank, `merge ${rank}`);
    }
  }
});

Deno.test("trainBpe: the same input gives identical files, however it is iterated", async () => {
  const texts = corpus(2, 20_000);
  const first = trainBpe(texts, 1000);
  const second = trainBpe(
    (function* () {
      yield* texts;
    })(),
    1000,
  );
  assertEquals(second, first);
  await withTempDir(async (dir) => {
    await saveBpe(`${dir}/a`, first);
    await saveBpe(`${dir}/b`, second);
    for (const name of ["vocab.json", "merges.txt"]) {
      await assertSameFile(`${dir}/a/${name}`, `${dir}/b/${name}`);
    }
    // Only the two files: the temporary files of the atomic writes are gone.
    assertEquals([...Deno.readDirSync(`${dir}/a`)].map((e) => e.name).sort(), [
      "merges.txt",
      "vocab.json",
    ]);
  });
});

Deno.test("saved files load and encode the training text as the merges imply", async () => {
  const texts = corpus(3, 30_000);
  const tables = trainBpe(texts, 1500);
  await withTempDir(async (dir) => {
    await saveBpe(dir, tables);
    const merges = await Deno.readTextFile(`${dir}/merges.txt`);
    assert(merges.startsWith("#version: 0.2\n"), "merges.txt starts with the version line");
    const tokenizer = await BpeTokenizer.load(dir);
    assertEquals(tokenizer.vocabSize, 1500);
    assertEquals(tokenizer.eotId, 1499);
    const ids = new Map(tables.vocab.map((token, id) => [token, id]));
    const implied = new Map<string, number[]>();
    for (const text of texts) {
      const expected: number[] = [];
      for (const [piece] of text.matchAll(GPT2_SPLIT)) {
        if (!implied.has(piece)) {
          implied.set(piece, applyMergesInOrder(piece, tables.merges).map((t) => ids.get(t)!));
        }
        expected.push(...implied.get(piece)!);
      }
      assertEquals(tokenizer.encode(text), expected);
      assertEquals(tokenizer.decode(expected), text);
    }
  });
});

Deno.test("trainBpe: vocabulary sizes it cannot make are errors", () => {
  for (const size of [256, 65537, 1000.5]) {
    assertThrows(() => trainBpe(["some text"], size), RangeError, "vocabSize must be an integer");
  }
});

Deno.test("saveBpe refuses tables the loader would reject", async () => {
  const broken: BpeTables = { vocab: [...BYTE_TOKENS, EOT], merges: [["a", "b"]] };
  await withTempDir(async (dir) => {
    await assertRejects(
      () => saveBpe(dir, broken),
      TokenizerError,
      '"ab" is not in the vocabulary',
    );
    assertEquals([...Deno.readDirSync(dir)], []);
  });
});
