// routing.html: the routing analysis as the CoMiGS paper's routing figures show it (Fan et al.,
// ICML 2025: text with every token highlighted by the generalist's routing weight). One
// self-contained page (inline CSS and script, nothing fetched): per client, its first test tokens
// shaded by the generalist's (expert 0's) gate in the chosen block, or averaged over the blocks,
// and beside them the function vs content word summary of routing.md. A pure function of the
// analysis (model/routing.ts); cli/routing.ts writes it.
import { escapeXml } from "./escape_xml.ts";
import {
  type ClassStats,
  type ClientRouting,
  fixed,
  FUNCTION_WORDS,
  type RoutingMeta,
  routingRows,
  signed,
} from "./routing.ts";

type Rgb = readonly [number, number, number];

/**
 * The colour scale, diverging at an even split: a CoMiGS-1G1S block has two experts, so the
 * question a shade answers is whether a token leans to the generalist (red) or its specialist
 * (blue). The ends and middle are ColorBrewer's RdBu (colour-blind safe), interpolated linearly
 * in sRGB, as CSS gradients interpolate hex colours (the legend is one).
 */
export const GATE_SCALE: { specialists: Rgb; even: Rgb; generalist: Rgb } = {
  specialists: [33, 102, 172],
  even: [247, 247, 247],
  generalist: [178, 24, 43],
};

/** Gate weights are drawn in steps of 0.001, the precision of the summary's numbers. */
export const WEIGHT_STEPS = 1000;

/** The shade of a generalist gate weight in [0, 1] (clamped), as integer sRGB channels. */
export function gateColour(weight: number): [number, number, number] {
  const w = Math.min(1, Math.max(0, weight));
  const [from, to, t] = w < 0.5
    ? [GATE_SCALE.specialists, GATE_SCALE.even, w / 0.5]
    : [GATE_SCALE.even, GATE_SCALE.generalist, (w - 0.5) / 0.5];
  return [0, 1, 2].map((c) => Math.round(from[c] + (to[c] - from[c]) * t)) as [
    number,
    number,
    number,
  ];
}

/** White text on a shade too dark for black (WCAG relative luminance below 0.25). */
function lightInk([r, g, b]: Rgb): boolean {
  const linear = (c: number) => {
    const s = c / 255;
    return s <= 0.04045 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b) < 0.25;
}

const hex = (rgb: Rgb) => rgb.map((c) => c.toString(16).padStart(2, "0")).join("");

/** A weight as the integer step the page stores (0..WEIGHT_STEPS). */
export const weightStep = (w: number) => Math.round(Math.min(1, Math.max(0, w)) * WEIGHT_STEPS);

/** The page's data: per step its shade and ink, per client and view the tokens' weight steps. */
interface PageData {
  /** The views of the layer selector, in its order. */
  views: string[];
  /** Six hex digits per step. */
  palette: string;
  /** Per step, "1" where the ink is white. */
  ink: string;
  /** [client][view][token]. */
  steps: number[][][];
}

const mean = (xs: readonly (number | null)[]) =>
  xs.some((x) => x === null) ? null : xs.reduce((a, x) => a! + x!, 0)! / xs.length;

/**
 * The page for the analysis of one run. Every client must report the same layers (as
 * analyseRouting does); with more than one, the selector also offers their mean.
 */
export function routingHtml(meta: RoutingMeta, clients: readonly ClientRouting[]): string {
  const layers = clients[0]?.layers.map((l) => l.layer) ?? [];
  for (const c of clients) {
    const own = c.layers.map((l) => l.layer);
    if (own.join() !== layers.join() || c.shown.generalist.length !== layers.length) {
      throw new RangeError(
        `routingHtml: client ${c.client} reports layers ${own} with ${c.shown.generalist.length} ` +
          `rows of gates; client ${clients[0].client} reports ${layers}`,
      );
    }
    const n = c.shown.texts.length;
    if (c.shown.kinds.length !== n || c.shown.generalist.some((g) => g.length !== n)) {
      throw new RangeError(`routingHtml: client ${c.client} shows ${n} texts but other lengths`);
    }
  }
  const withMean = layers.length > 1;
  const views = [...layers.map((l) => `layer ${l}`), ...(withMean ? ["mean over layers"] : [])];
  const palette = Array.from({ length: WEIGHT_STEPS + 1 }, (_, q) => gateColour(q / WEIGHT_STEPS));
  const data: PageData = {
    views,
    palette: palette.map(hex).join(""),
    ink: palette.map((rgb) => lightInk(rgb) ? "1" : "0").join(""),
    steps: clients.map(({ shown }) => {
      const perLayer = shown.generalist.map((g) => Array.from(g, weightStep));
      if (!withMean) return perLayer;
      const averaged = shown.texts.map((_, p) =>
        weightStep(shown.generalist.reduce((sum, g) => sum + g[p], 0) / layers.length)
      );
      return [...perLayer, averaged];
    }),
  };
  const title = `Routing: ${meta.method} on ${meta.scenario}` +
    `${meta.ood ? " (out of distribution)" : ""}, seed ${meta.seed}`;
  const legendStops = Array.from({ length: 11 }, (_, k) => `#${hex(gateColour(k / 10))}`);
  return [
    "<!doctype html>",
    '<html lang="en"><head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>${escapeXml(title)}</title>`,
    `<style>${STYLE}</style>`,
    "</head><body>",
    "<header>",
    `<h1>${escapeXml(title)}</h1>`,
    `<p class="about">Run <code>${escapeXml(meta.run)}</code>. Each client's adapted model read ` +
    `its own test split (up to ${meta.maxTokens} tokens, windows of ${meta.seq}); shown are ` +
    "its first tokens, each shaded by the generalist's (expert 0's) gate weight in the chosen " +
    "block. Beside them, as in routing.md, the generalist's mean weight over all analysed " +
    `whole-word tokens: <b>function</b> words (a fixed list of ${FUNCTION_WORDS.size} English ` +
    "function words, underlined in the text) and <b>content</b> words (every other whole word). " +
    "Hover over a token for its weight.</p>",
    '<div class="controls"><label>Block <select id="view">',
    ...views.map((v, k) => `<option value="${k}">${escapeXml(v)}</option>`),
    "</select></label>",
    '<div class="legend" aria-label="colour scale of the generalist\'s gate weight">',
    `<div class="bar" style="background: linear-gradient(to right, ${legendStops.join(", ")})">` +
    "</div>",
    '<div class="ticks"><span>0</span><span>0.25</span><span>0.5</span><span>0.75</span>' +
    "<span>1</span></div>",
    '<div class="ends"><span>all to specialists</span><span>even</span>' +
    "<span>all to the generalist</span></div>",
    "</div></div>",
    "</header>",
    ...clients.map((c) => clientSection(c, withMean)),
    `<script type="application/json" id="routing-data">${scriptJson(data)}</script>`,
    `<script>${SCRIPT}</script>`,
    "</body></html>",
    "",
  ].join("\n");
}

/** One client: its tokens, and its summary table (a row per view). */
function clientSection(c: ClientRouting, withMean: boolean): string {
  const rows = routingRows([c]);
  const row = (
    view: number,
    label: string,
    experts: string,
    fn: number | null,
    ct: number | null,
  ) =>
    `<tr data-view="${view}"><th>${escapeXml(label)}</th><td>${experts}</td>` +
    `<td class="function">${fixed(fn)}</td><td class="content">${fixed(ct)}</td>` +
    `<td class="difference">${signed(fn === null || ct === null ? null : fn - ct)}</td></tr>`;
  const weight = (s: ClassStats) => s.generalist_weight;
  const tableRows = rows.map((r, k) =>
    row(k, `layer ${r.layer}`, String(r.experts), weight(r.function), weight(r.content))
  );
  if (withMean) {
    tableRows.push(row(
      rows.length,
      "mean",
      "",
      mean(rows.map((r) => weight(r.function))),
      mean(rows.map((r) => weight(r.content))),
    ));
  }
  const tokens = c.shown.texts.map((text, p) => {
    const kind = c.shown.kinds[p];
    const cls = kind === "function" ? "t function" : kind === "content" ? "t content" : "t";
    return `<span class="${cls}">${escapeXml(text)}</span>`;
  }).join("");
  const first = rows[0];
  return [
    `<section class="client" data-client="${c.client}">`,
    `<h2>Client ${c.client}: ${escapeXml(c.name)}</h2>`,
    '<div class="columns">',
    `<div class="text">${tokens}</div>`,
    '<aside class="summary">',
    "<table><thead><tr><th>block</th><th>E</th><th>function</th><th>content</th>" +
    "<th>difference</th></tr></thead>",
    `<tbody>${tableRows.join("")}</tbody></table>`,
    `<p>Mean generalist weight over ${first?.function.tokens ?? 0} function and ` +
    `${first?.content.tokens ?? 0} content word tokens of the ${c.tokens} analysed; ` +
    `${c.shown.texts.length} tokens shown.</p>`,
    "</aside>",
    "</div>",
    "</section>",
  ].join("\n");
}

/** JSON inside a script element: "<" escaped, so no "</script>" or "<!--" can end it early. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(/</g, "\\u003c");
}

const STYLE = `
body { margin: 1.5rem; font: 15px/1.5 system-ui, sans-serif; color: #222; background: #fff; }
h1 { font-size: 1.35rem; margin: 0 0 0.4rem; }
h2 { font-size: 1.1rem; margin: 1.2rem 0 0.4rem; }
.about { max-width: 62rem; margin: 0 0 0.8rem; color: #444; }
.controls { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
.legend { width: 22rem; font-size: 0.8rem; color: #444; }
.legend .bar { height: 0.9rem; border: 1px solid #bbb; }
.legend .ticks, .legend .ends { display: flex; justify-content: space-between; }
.columns { display: grid; grid-template-columns: minmax(0, 1fr) 21rem; gap: 1.5rem; }
.text { font: 15px/1.9 Georgia, "DejaVu Serif", serif; white-space: pre-wrap;
  overflow-wrap: anywhere; border: 1px solid #ddd; padding: 0.6rem 0.8rem; }
.t { border-radius: 2px; }
.t:empty { padding: 0 1px; }
.t.function { text-decoration: underline; text-underline-offset: 3px; }
table { border-collapse: collapse; font-size: 0.85rem; font-variant-numeric: tabular-nums; }
th, td { padding: 0.15rem 0.5rem; text-align: right; border-bottom: 1px solid #eee;
  white-space: nowrap; }
thead th { border-bottom: 1px solid #999; }
tbody th { text-align: left; font-weight: normal; }
tr.selected { background: #fff3c4; font-weight: bold; }
.summary p { font-size: 0.8rem; color: #555; }
@media (max-width: 50rem) { .columns { grid-template-columns: 1fr; } }
`;

// Shades every token for the chosen view and marks its summary row.
const SCRIPT = `
const data = JSON.parse(document.getElementById("routing-data").textContent);
const select = document.getElementById("view");
const sections = document.querySelectorAll("section.client");
function show(view) {
  sections.forEach((section, c) => {
    const steps = data.steps[c][view];
    section.querySelectorAll(".text .t").forEach((span, p) => {
      const q = steps[p];
      span.style.backgroundColor = "#" + data.palette.substr(q * 6, 6);
      span.style.color = data.ink[q] === "1" ? "#fff" : "#000";
      span.title = data.views[view] + ": generalist " + (q / ${WEIGHT_STEPS}).toFixed(3);
    });
    section.querySelectorAll("tr[data-view]").forEach((row) =>
      row.classList.toggle("selected", row.dataset.view === String(view)));
  });
}
select.addEventListener("change", () => show(Number(select.value)));
show(Number(select.value));
`;
