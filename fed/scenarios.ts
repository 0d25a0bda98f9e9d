// The data scenarios of the federated experiments (method.md §5): one category of text per
// client, as plain-text documents split into train / validation / test by document.
//
//   topics     the Brown corpus by genre group: press, learned, fiction, nonfiction
//   languages  the Quran in en, fr, es, id (the same verses in four languages)
//   domains    Brown fiction, the Quran in English (scripture), spam email bodies, TypeScript code
//   iid        all of Brown shuffled by document (seeded) and dealt evenly to the clients
//
// None of it is in the base model's pretraining text (State of the Union + ham email bodies):
// see fed/corpora.ts and SPAM_BODIES_IN_HAM below.
//
// Split: a category's documents are ranked by a hash of their ids (never the seed, so every
// method and seed sees the same splits); the first 10% of the ranking is validation, the next
// 10% test, the rest train. The Quran's verse groups are ranked by verse range without the
// language, so a verse is in the same split in every language and no translation of a test
// verse is trained on. Each split is then taken in rank order (a fixed pseudo-random order, so
// a cap does not cut off whole genres the way file order would) until its cap. iid splits all of
// Brown this way, then shuffles each split with the seed and deals it; its caps apply per client
// in the dealt order.
//
// Out of distribution (ood): each client keeps its own train split; every client gets the same
// validation and test set, the same number of characters from each category's split (the
// smallest category's amount, and no more than an equal share of one split's cap, so the mixed
// set costs what one client's own set costs to evaluate; the last document taken from a
// category is cut to fit).
import {
  fnv1a,
  QURAN_LANGUAGES,
  readQuran,
  readSpamEmails,
  readTypeScriptCode,
} from "./corpora.ts";
import type { Document } from "./corpora.ts";
import { type BrownGenre, readBrown } from "./brown.ts";
import { Mulberry32 } from "../model/rng.ts";

export const SCENARIOS = ["topics", "languages", "domains", "iid"] as const;
export type Scenario = typeof SCENARIOS[number];

/**
 * Whether the seed deals the documents (iid): then each seed trains and tests every client on
 * other documents, so even the untrained base has a result per seed.
 */
export function seedDealsDocuments(scenario: Scenario): boolean {
  return scenario === "iid";
}

/** One client's documents as text. */
export interface ClientCorpus {
  name: string;
  train: string[];
  val: string[];
  test: string[];
}

/** The same with the documents' ids (an ood document cut to fit keeps its id). */
export interface ClientDocuments {
  name: string;
  train: Document[];
  val: Document[];
  test: Document[];
}

export interface ScenarioOptions {
  /** 1..4 (the first categories in the listed order); iid: 1..IID_MAX_CLIENTS. */
  clients: number;
  /** Share one uniformly mixed validation and test set across all clients. */
  ood: boolean;
  /** Shuffles the iid dealing; no other scenario depends on it. */
  seed: number;
}

export const VAL_FRACTION = 0.1;
export const TEST_FRACTION = 0.1;
// Caps per client, in characters (2-3.7 per token of the base tokenizer: English ~3.2, fr/es/id
// ~1.95, code 2.4, so a capped test split is 25k-42k tokens).
// Evaluation reads every token of a client's validation/test split each time (method.md §5), so
// the evaluation caps bound its cost; the train cap keeps the clients' data volumes comparable
// (Brown nonfiction has ~2M characters, the English Quran ~0.85M, typescript.js ~9M), so that a
// difference between clients comes from their category rather than its size.
export const VAL_CAP_CHARS = 80_000;
export const TEST_CAP_CHARS = 80_000;
export const TRAIN_CAP_CHARS = 1_200_000;
export const IID_MAX_CLIENTS = 16;

const FICTION: BrownGenre[] = [
  "fiction",
  "mystery",
  "adventure",
  "romance",
  "science_fiction",
  "humor",
];

interface Category {
  name: string;
  documents: () => Promise<Document[]>;
}

const brown = (name: string, genres: BrownGenre[]): Category => ({
  name,
  documents: () => readBrown(genres),
});

const CATEGORIES: Record<Exclude<Scenario, "iid">, Category[]> = {
  topics: [
    brown("press", ["news", "editorial", "reviews"]),
    brown("learned", ["learned", "government"]),
    brown("fiction", FICTION),
    brown("nonfiction", ["religion", "lore", "belles_lettres", "hobbies"]),
  ],
  languages: QURAN_LANGUAGES.map((language) => ({
    name: language,
    documents: () => readQuran(language),
  })),
  domains: [
    brown("fiction", FICTION),
    { name: "scripture", documents: () => readQuran("en") },
    { name: "spam", documents: spamDocuments },
    { name: "code", documents: () => readTypeScriptCode() },
  ],
};

/**
 * Spam bodies that are also the body of a ham email (so in the pretraining text): one MSN Groups
 * notice. tests/fed/corpora_test.ts checks this list is exactly those.
 */
export const SPAM_BODIES_IN_HAM = ["spam/spam-2/01269"];

async function spamDocuments(): Promise<Document[]> {
  const excluded = new Set(SPAM_BODIES_IN_HAM);
  return (await readSpamEmails()).filter((doc) => !excluded.has(doc.id));
}

/** The default number of clients: one per category (iid: the same 4). */
export function scenarioClients(scenario: Scenario): number {
  checkScenario(scenario);
  return scenario === "iid" ? 4 : CATEGORIES[scenario].length;
}

/** Every client's train, validation and test documents as text. */
export async function loadScenario(
  scenario: Scenario,
  opts: ScenarioOptions,
): Promise<ClientCorpus[]> {
  const text = (docs: Document[]) => docs.map((doc) => doc.text);
  return (await loadScenarioDocuments(scenario, opts)).map((client) => ({
    name: client.name,
    train: text(client.train),
    val: text(client.val),
    test: text(client.test),
  }));
}

/** loadScenario with the documents' ids. */
export async function loadScenarioDocuments(
  scenario: Scenario,
  { clients, ood, seed }: ScenarioOptions,
): Promise<ClientDocuments[]> {
  checkScenario(scenario);
  const uncapped = scenario === "iid"
    ? await iidSplits(clients, seed)
    : await categorySplits(scenario, clients);
  const splits = uncapped.map((split): ClientDocuments => ({
    name: split.name,
    train: upToChars(split.train, TRAIN_CAP_CHARS),
    val: upToChars(split.val, VAL_CAP_CHARS),
    test: upToChars(split.test, TEST_CAP_CHARS),
  }));
  if (!ood) return splits;
  const val = uniformMix(splits.map((split) => split.val), VAL_CAP_CHARS);
  const test = uniformMix(splits.map((split) => split.test), TEST_CAP_CHARS);
  return splits.map(({ name, train }) => ({ name, train, val: [...val], test: [...test] }));
}

/** How many clients `scenario` can have: one per category, or IID_MAX_CLIENTS for iid. */
export function maxClients(scenario: Scenario): number {
  return scenario === "iid" ? IID_MAX_CLIENTS : CATEGORIES[scenario].length;
}

function checkScenario(scenario: string): asserts scenario is Scenario {
  if (!(SCENARIOS as readonly string[]).includes(scenario)) {
    throw new Error(`unknown scenario "${scenario}"; expected one of ${SCENARIOS.join(", ")}`);
  }
}

function checkClients(scenario: Scenario, clients: number, max: number, what: string): void {
  if (!Number.isInteger(clients) || clients < 1 || clients > max) {
    throw new Error(
      `scenario "${scenario}" has ${what}, so clients must be 1..${max}; got ${clients}`,
    );
  }
}

/** The first `clients` categories, each split by document (in rank order, not yet capped). */
async function categorySplits(
  scenario: Exclude<Scenario, "iid">,
  clients: number,
): Promise<ClientDocuments[]> {
  const categories = CATEGORIES[scenario];
  const names = categories.map((category) => category.name);
  checkClients(scenario, clients, names.length, `${names.length} categories (${names.join(", ")})`);
  const chosen = categories.slice(0, clients);
  const docs = await Promise.all(chosen.map((category) => category.documents()));
  return chosen.map((category, i) => ({ name: category.name, ...splitByDocument(docs[i]) }));
}

/**
 * All of Brown split by document, then each split shuffled (seeded Fisher-Yates) and dealt
 * round-robin, so every client gets an even share of every split (dealing before splitting
 * could leave a client of 16 without a test document).
 */
async function iidSplits(clients: number, seed: number): Promise<ClientDocuments[]> {
  checkClients("iid", clients, IID_MAX_CLIENTS, "no categories (Brown is dealt evenly)");
  const { train, val, test } = splitByDocument(await readBrown());
  const random = new Mulberry32(seed);
  const deal = (docs: Document[]) => {
    const shuffled = [...docs];
    for (let i = shuffled.length - 1; i > 0; i--) {
      const j = Math.floor(random.next() * (i + 1));
      [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
    }
    return (k: number) => shuffled.filter((_, i) => i % clients === k);
  };
  const [trainOf, valOf, testOf] = [deal(train), deal(val), deal(test)];
  return Array.from({ length: clients }, (_, k) => ({
    name: `iid${k}`,
    train: trainOf(k),
    val: valOf(k),
    test: testOf(k),
  }));
}

/** The key a document's split is hashed from: its id, without the Quran's language. */
function splitKey(id: string): string {
  return id.replace(/^quran\/[a-z]+\//, "quran/");
}

/**
 * Distinct documents (a text seen before is dropped: spam repeats) ranked by the hash of their
 * split key; the first 10% of the ranking is validation, the next 10% test, the rest train,
 * each in rank order. Splitting by rank rather than by a hash threshold gives every category
 * exactly its share (a threshold left Brown's 110 learned files without a test document).
 */
function splitByDocument(docs: Document[]): Omit<ClientDocuments, "name"> {
  const seen = new Set<string>();
  const ranked = docs
    .filter((doc) => !seen.has(doc.text) && seen.add(doc.text))
    .map((doc) => ({ doc, rank: mixedHash(splitKey(doc.id)) }))
    .sort((a, b) => a.rank - b.rank || (a.doc.id < b.doc.id ? -1 : 1))
    .map(({ doc }) => doc);
  const valEnd = Math.round(ranked.length * VAL_FRACTION);
  const testEnd = valEnd + Math.round(ranked.length * TEST_FRACTION);
  return {
    train: ranked.slice(testEnd),
    val: ranked.slice(0, valEnd),
    test: ranked.slice(valEnd, testEnd),
  };
}

/**
 * FNV-1a followed by MurmurHash3's finaliser: FNV-1a alone barely changes its high bits between
 * ids that differ in the last character ("brown/ca01", "brown/ca02"), so its order follows the
 * file order; the finaliser spreads every input bit over all output bits.
 */
function mixedHash(key: string): number {
  let h = fnv1a(key);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The leading documents until their total reaches `cap` (the last may overshoot it). */
function upToChars(docs: Document[], cap: number): Document[] {
  const taken: Document[] = [];
  let total = 0;
  for (const doc of docs) {
    if (total >= cap) break;
    taken.push(doc);
    total += doc.text.length;
  }
  return taken;
}

/** The same number of characters from every split, the smallest split's total. */
function uniformMix(splits: Document[][], cap: number): Document[] {
  const each = Math.min(Math.floor(cap / splits.length), ...splits.map(totalChars));
  return splits.flatMap((docs) => exactlyChars(docs, each));
}

/** The leading documents holding `budget` characters, the last one cut to fit. */
function exactlyChars(docs: Document[], budget: number): Document[] {
  const taken: Document[] = [];
  for (const doc of docs) {
    if (budget <= 0) break;
    let text = doc.text.slice(0, budget);
    // Never leave half of a surrogate pair at the cut (the total may then be one short).
    if (/[\uD800-\uDBFF]$/.test(text) && text.length < doc.text.length) text = text.slice(0, -1);
    taken.push({ id: doc.id, text });
    budget -= doc.text.length;
  }
  return taken;
}

function totalChars(docs: readonly Document[]): number {
  return docs.reduce((total, doc) => total + doc.text.length, 0);
}
