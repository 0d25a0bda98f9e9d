// The Brown corpus as plain text: the tagged tokens of NLTK's format put back into readable
// English, one document per corpus file, genres from cats.txt.
import { assert, assertEquals } from "../assert.ts";
import { BROWN_GENRES, detokenize, readBrown, readBrownGenres } from "../../fed/brown.ts";

Deno.test("detokenize strips tags and spaces punctuation, quotes and brackets as printed", () => {
  const tagged = [
    "",
    "",
    "\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc (/( in/in part/nn )/) " +
    "it/pps asked/vbd :/: why/wrb ?/. ?/.",
    "",
    "",
    "Merger/nn-hl proposed/vbn-hl ",
    "However/wrb ,/, Ivan/np Allen/np Jr./np ./.",
    "He/pps called/vbd it/ppo '/' pro/jj '/' and/cc the/at farmers'/nns$ 'em/ppo !/.",
    "",
    "",
    "\t``/`` It's/pps+bez '/' Met/np '/' ''/'' ;/. 1/2/cd of/in it/ppo ./.",
    "",
  ].join("\n");
  assertEquals(
    detokenize(tagged),
    'The jury said "no evidence", and (in part) it asked: why??\n\n' +
      "Merger proposed\nHowever, Ivan Allen Jr. He called it 'pro' and the farmers' 'em!\n\n" +
      "\"It's 'Met'\"; 1/2 of it.",
  );
});

Deno.test("detokenize tells an opening single quote from a closing one", () => {
  assertEquals(detokenize("'/' Yes/rb ,/, '/' he/pps said/vbd ./."), "'Yes,' he said.");
  assertEquals(detokenize("we/ppss elected/vbd '/' ''/'' ./."), "we elected'\".");
});

Deno.test("detokenize glues a closing bracket that Brown put at the next sentence's start", () => {
  assertEquals(detokenize("(/( Who/wps ?/.\n)/) He/pps did/dod ./."), "(Who?) He did.");
  assertEquals(detokenize("a/at 1/2''/nn pipe/nn"), 'a 1/2" pipe');
});

Deno.test("readBrownGenres maps all 500 files to the 15 genres", async () => {
  const genres = await readBrownGenres();
  assertEquals(genres.size, 500);
  assertEquals(new Set(genres.values()), new Set(BROWN_GENRES));
  assertEquals(genres.get("ca01"), "news");
  assertEquals(genres.get("cr09"), "humor");
  assertEquals([...genres.values()].filter((genre) => genre === "humor").length, 9);
});

Deno.test("readBrown gives readable documents, one per file, only of the genres asked", async () => {
  const docs = await readBrown();
  assertEquals(docs.length, 500);
  assertEquals(docs.map((d) => d.id), docs.map((d) => d.id).sort());
  assertEquals(docs[0].id, "brown/ca01");
  assert(docs[0].text.startsWith(
    "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary " +
      'election produced "no evidence" that any irregularities took place.\n\nThe jury further',
  ));
  for (const { id, text } of docs) {
    assert(text.length > 8000, `${id} is short: ${text.length}`);
    // "B.t.u./sq. ft. of material/hr./*0F./in." (cj76) is printed text, not a tag.
    assert(!/[A-Za-z]\/(at|nn|np|vbd|jj|cc)\b/.test(text), `${id} keeps a tag`);
    assert(!text.includes("``") && !text.includes("''"), `${id} keeps a Brown quote`);
    // " :35.3" is a time (ce09).
    assert(!/ [,.;?!)]| :\D/.test(text), `${id} has a space before punctuation`);
  }
  const humor = await readBrown(["humor"]);
  assertEquals(
    humor.map((d) => d.id),
    docs.filter((d) => d.id.startsWith("brown/cr")).map((d) => d.id),
  );
});
