// Routing analysis (method.md §5's finding "in the first layer, function words route to the
// generalist"): which tokens are whole words, whether each is a function or a content word, the
// generalist's (expert 0's) gate weight averaged per class, and the report: plain computation on
// arrays (cli/routing.ts reads the gates off the GPU with a StreamCapture).
import { ShapeError } from "../engine/errors.ts";
import { markdownTable } from "./markdown_table.ts";

/**
 * English function words, lowercase (218). Chosen by hand, class by class, from the closed word
 * classes of English grammar (articles and determiners, prepositions, conjunctions, pronouns,
 * auxiliaries and modals, particles; the classes of a reference grammar such as Quirk et al.),
 * keeping the members common in running text, as NLTK's English stop-word list has them, but
 * not its content words ("own", "same", "again", "further"). The archaic pronouns (thee, thou,
 * ...) are in because the scenarios' English scripture uses them. A word that is as often a
 * content word is left out ("won"); "like" is in (the preposition is its commoner use).
 */
export const FUNCTION_WORDS: ReadonlySet<string> = new Set([
  // Articles and determiners (possessive determiners with the pronouns below).
  ..."a an the this that these those each every either neither some any no all both half few"
    .split(" "),
  ..."many much more most several such another other enough".split(" "),
  // Prepositions.
  ..."about above across after against along among amongst around as at before behind below"
    .split(" "),
  ..."beneath beside besides between beyond by despite down during except for from in inside"
    .split(" "),
  ..."into like near of off on onto out outside over past per since through throughout till to"
    .split(" "),
  ..."toward towards under underneath until unto up upon via with within without".split(" "),
  // Conjunctions (coordinating and subordinating).
  ..."and but or nor so yet although though because if unless whether while whereas whilst"
    .split(" "),
  ..."when whenever where wherever than once lest".split(" "),
  // Pronouns: personal, possessive, reflexive, relative/interrogative, indefinite.
  ..."i me my mine myself you your yours yourself yourselves he him his himself she her hers"
    .split(" "),
  ..."herself it its itself we us our ours ourselves they them their theirs themselves".split(" "),
  ..."who whom whose which what whatever whoever whichever".split(" "),
  ..."somebody someone something anybody anyone anything everybody everyone everything nobody"
    .split(" "),
  ..."none nothing one ones thee thou thy thine ye".split(" "),
  // Auxiliary and modal verbs.
  ..."be am is are was were been being have has had having do does did doing".split(" "),
  ..."will would shall should can could may might must ought".split(" "),
  // Stems of negative contractions: GPT-2's pre-tokenizer splits "don't" into "don" + "'t", so
  // "don" is a whole-word token here ("won" is left out: as often the verb).
  ..."don doesn didn isn aren wasn weren hasn haven hadn wouldn couldn shouldn mustn ain"
    .split(" "),
  // Particles and other closed-class adverbs: negation, existential "there", deixis, wh-adverbs,
  // degree and focus particles.
  ..."not there here then now how why too also very just only even".split(" "),
]);

export type WordKind = "function" | "content";

export interface WordToken {
  /** The word lowercased, without its leading space. */
  word: string;
  kind: WordKind;
}

const LETTERS = /^\p{L}+$/u;
const startsWithLetter = (text: string) => /^\p{L}/u.test(text);
const endsWithLetter = (text: string) => /\p{L}$/u.test(text);

/**
 * The word a token spells when it is a whole word, else null. `piece` is the token's decoded
 * text; `previous` and `next` are its neighbours' (undefined at the start of a window and at the
 * end of the stream). A whole word: letters only after an optional single leading space; starts
 * with that space, or follows a token ending in a non-letter, or starts a window; and the next
 * token does not start with a letter (so it is not the first piece of a longer word).
 */
export function wordToken(
  previous: string | undefined,
  piece: string,
  next: string | undefined,
): WordToken | null {
  const spaced = piece.startsWith(" ");
  const body = spaced ? piece.slice(1) : piece;
  if (!LETTERS.test(body)) return null;
  const startsWord = spaced || previous === undefined || !endsWithLetter(previous);
  if (!startsWord || (next !== undefined && startsWithLetter(next))) return null;
  const word = body.toLowerCase();
  return { word, kind: FUNCTION_WORDS.has(word) ? "function" : "content" };
}

/**
 * The whole-word tokens among the model's inputs of a stream: positions 0..length−2 (the last
 * token is only ever a target), read in windows of T starting at multiples of T (evalWindows),
 * so a window's first token has no previous token. `pieces[p]` is token p's decoded text.
 */
export function streamWords(pieces: readonly string[], T: number): (WordToken | null)[] {
  return Array.from(
    { length: Math.max(0, pieces.length - 1) },
    (_, p) => wordToken(p % T === 0 ? undefined : pieces[p - 1], pieces[p], pieces[p + 1]),
  );
}

/** Sums over the tokens of one class. */
export interface ClassTally {
  tokens: number;
  /** Σ gate[·, 0]. */
  generalistWeight: number;
  /** Tokens whose largest gate is expert 0's. */
  generalistTop1: number;
}

/** One layer's gates gathered by word class, and per word. */
export interface LayerTally {
  layer: number;
  experts: number;
  function: ClassTally;
  content: ClassTally;
  words: Map<string, { kind: WordKind; tokens: number; generalistWeight: number }>;
}

/**
 * Gathers one layer's gates [positions, E] (row p belongs to words[p]) by word class. A token's
 * largest gate is the generalist's when no other expert's gate is strictly larger (ties go to
 * the lowest index, as the gate kernel breaks them).
 */
export function tallyGates(
  words: readonly (WordToken | null)[],
  gates: Float32Array,
  experts: number,
  layer: number,
): LayerTally {
  if (gates.length !== words.length * experts) {
    throw new ShapeError(
      `tallyGates: ${gates.length} gate values for ${words.length} tokens × ${experts} experts`,
    );
  }
  const empty = (): ClassTally => ({ tokens: 0, generalistWeight: 0, generalistTop1: 0 });
  const tally: LayerTally = {
    layer,
    experts,
    function: empty(),
    content: empty(),
    words: new Map(),
  };
  words.forEach((token, p) => {
    if (!token) return;
    const row = gates.subarray(p * experts, (p + 1) * experts);
    const generalist = row[0];
    const top1 = row.every((g) => g <= generalist);
    const sums = tally[token.kind];
    sums.tokens++;
    sums.generalistWeight += generalist;
    if (top1) sums.generalistTop1++;
    let word = tally.words.get(token.word);
    if (!word) {
      tally.words.set(token.word, word = { kind: token.kind, tokens: 0, generalistWeight: 0 });
    }
    word.tokens++;
    word.generalistWeight += generalist;
  });
  return tally;
}

/** A class's means (null without tokens). */
export interface ClassStats {
  tokens: number;
  generalist_weight: number | null;
  generalist_top1: number | null;
}

export function classStats(t: ClassTally): ClassStats {
  return {
    tokens: t.tokens,
    generalist_weight: t.tokens ? t.generalistWeight / t.tokens : null,
    generalist_top1: t.tokens ? t.generalistTop1 / t.tokens : null,
  };
}

export interface WordStats {
  word: string;
  tokens: number;
  generalist_weight: number;
}

/** The `n` most frequent words of a class (ties: alphabetical) with their mean generalist weight. */
export function topWords(tally: LayerTally, kind: WordKind, n: number): WordStats[] {
  return [...tally.words]
    .filter(([, w]) => w.kind === kind)
    .sort(([a, x], [b, y]) => y.tokens - x.tokens || (a < b ? -1 : a > b ? 1 : 0))
    .slice(0, n)
    .map(([word, w]) => ({
      word,
      tokens: w.tokens,
      generalist_weight: w.generalistWeight / w.tokens,
    }));
}

/**
 * The generalist's gate on each of the first `count` rows of one layer's gates [positions, E]:
 * the per-token weights a page shows, kept for the shown tokens only.
 */
export function generalistWeights(
  gates: Float32Array,
  experts: number,
  count: number,
): Float32Array {
  if (count * experts > gates.length) {
    throw new ShapeError(
      `generalistWeights: ${count} tokens × ${experts} experts from ${gates.length} gate values`,
    );
  }
  return Float32Array.from({ length: count }, (_, p) => gates[p * experts]);
}

/** The first input tokens of a client's analysed text, token by token (the routing page). */
export interface ShownText {
  /** Each token's text (model/token_texts.ts: joined, the decoded text). */
  texts: string[];
  /** Each token's word class as the tallies count it; null: not a whole word. */
  kinds: (WordKind | null)[];
  /** Per layer (in the order of ClientRouting.layers), the generalist's gate on each token. */
  generalist: Float32Array[];
}

/** One client's analysis: its layers' tallies over its analysed input tokens. */
export interface ClientRouting {
  client: number;
  name: string;
  /** Input positions analysed (whole words or not). */
  tokens: number;
  layers: LayerTally[];
  /** Its first tokens with their gates, as the HTML page shows them. */
  shown: ShownText;
}

export interface RoutingRow {
  client: number;
  name: string;
  layer: number;
  experts: number;
  function: ClassStats;
  content: ClassStats;
}

export function routingRows(clients: readonly ClientRouting[]): RoutingRow[] {
  return clients.flatMap((c) =>
    c.layers.map((l) => ({
      client: c.client,
      name: c.name,
      layer: l.layer,
      experts: l.experts,
      function: classStats(l.function),
      content: classStats(l.content),
    }))
  );
}

/** What the report says about the run it analysed. */
export interface RoutingMeta {
  run: string;
  method: string;
  scenario: string;
  ood: boolean;
  seed: number;
  /** Window length (the run's --seq). */
  seq: number;
  maxTokens: number;
}

/** How many words each top list shows. */
export const TOP_WORDS = 10;

/** routing.json: the meta, one row per client and layer, and the top words of the first layer. */
export function routingJson(meta: RoutingMeta, clients: readonly ClientRouting[]): unknown {
  const { maxTokens, ...rest } = meta;
  return {
    ...rest,
    max_tokens: maxTokens,
    function_words: FUNCTION_WORDS.size,
    rows: routingRows(clients),
    top_words: clients.map((c) => ({
      client: c.client,
      name: c.name,
      layer: c.layers[0]?.layer,
      function: c.layers[0] ? topWords(c.layers[0], "function", TOP_WORDS) : [],
      content: c.layers[0] ? topWords(c.layers[0], "content", TOP_WORDS) : [],
    })),
  };
}

/** A weight as the reports print it: three decimals, "–" for none. */
export const fixed = (x: number | null) => x === null ? "–" : x.toFixed(3);
/** A difference of weights: signed, three decimals; one that rounds to zero is "+0.000". */
export function signed(x: number | null): string {
  if (x === null) return "–";
  const rounded = Math.round(x * 1000) / 1000 || 0; // −0 as 0
  return (rounded >= 0 ? "+" : "") + rounded.toFixed(3);
}

/** The Markdown report: one table of every client and layer, then the first layer's top words. */
export function routingMarkdown(meta: RoutingMeta, clients: readonly ClientRouting[]): string {
  const rows = routingRows(clients);
  const difference = (r: RoutingRow) =>
    r.function.generalist_weight === null || r.content.generalist_weight === null
      ? null
      : r.function.generalist_weight - r.content.generalist_weight;
  const out: string[] = [
    `# Routing: ${meta.method} on ${meta.scenario}${meta.ood ? " (out of distribution)" : ""}, ` +
    `seed ${meta.seed}`,
    "",
    `Run \`${meta.run}\`. Each client's adapted model read its own test split (up to ` +
    `${meta.maxTokens} tokens, windows of ${meta.seq}); per block, the generalist's (expert 0's) ` +
    `gate weight averaged over whole-word tokens: **function** words (a fixed list of ` +
    `${FUNCTION_WORDS.size} English function words, model/routing.ts) and **content** words ` +
    `(every other whole word). Word pieces, punctuation and numbers are left out. "top-1" is the ` +
    `share of tokens whose largest gate is the generalist's. A block with E = 1 holds only the ` +
    `generalist: its gate is 1 by construction.`,
    "",
    markdownTable([
      [
        "client",
        "layer",
        "E",
        "function tokens",
        "content tokens",
        "weight: function",
        "weight: content",
        "difference",
        "top-1: function",
        "top-1: content",
      ],
      ...rows.map((r) => [
        `${r.client} ${r.name}`,
        String(r.layer),
        String(r.experts),
        String(r.function.tokens),
        String(r.content.tokens),
        fixed(r.function.generalist_weight),
        fixed(r.content.generalist_weight),
        signed(difference(r)),
        fixed(r.function.generalist_top1),
        fixed(r.content.generalist_top1),
      ]),
    ]),
  ];
  const first = rows.filter((r) => r.layer === clients[0]?.layers[0]?.layer && r.experts > 1);
  const compared = first.filter((r) => difference(r) !== null);
  if (compared.length) {
    const more = compared.filter((r) => difference(r)! > 0).length;
    const mean = compared.reduce((sum, r) => sum + difference(r)!, 0) / compared.length;
    out.push(
      "",
      `Layer ${first[0].layer}: function words get more generalist weight than content words ` +
        `for ${more} of ${compared.length} clients with a router (mean difference ` +
        `${signed(mean)}).`,
    );
  }
  for (const c of clients) {
    const layer = c.layers[0];
    if (!layer) continue;
    const fn = topWords(layer, "function", TOP_WORDS);
    const content = topWords(layer, "content", TOP_WORDS);
    out.push(
      "",
      `## Client ${c.client} (${c.name}): most frequent words, layer ${layer.layer}`,
      "",
      `${c.tokens} tokens analysed, ${layer.function.tokens + layer.content.tokens} of them ` +
        "whole words.",
      "",
      markdownTable([
        ["rank", "function word", "count", "weight", "content word", "count", "weight"],
        ...Array.from({ length: Math.max(fn.length, content.length) }, (_, i) => [
          String(i + 1),
          fn[i] ? `${fn[i].word}` : "",
          fn[i] ? String(fn[i].tokens) : "",
          fn[i] ? fixed(fn[i].generalist_weight) : "",
          content[i] ? `${content[i].word}` : "",
          content[i] ? String(content[i].tokens) : "",
          content[i] ? fixed(content[i].generalist_weight) : "",
        ]),
      ]),
    );
  }
  return out.join("\n") + "\n";
}
