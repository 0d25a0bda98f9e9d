// The comparison report of `deno task compare`: reads finished training runs (the files
// interfaces.md "Training runs" defines), aggregates test perplexity over seeds, and renders a
// Markdown table and an SVG plot. Everything but reading is a pure function of its inputs, and
// every rendering is deterministic (no dates, fixed number formats), so the same runs give the
// same bytes.
import { escapeXml } from "../model/escape_xml.ts";
import { markdownTable } from "../model/markdown_table.ts";
import type { TrainOptions } from "./options.ts";
import { type MetricRecord, metricsOnly, type Summary as RunSummary } from "./records.ts";
import { readMetrics, readRunConfig } from "./run_folder.ts";
import { type Scenario, seedDealsDocuments } from "./scenarios.ts";

/**
 * The frozen base: deterministic and trains nothing, so it is evaluated once, or once per seed
 * where the seed deals the documents (seedDealsDocuments).
 */
export const PRETRAINED = "pretrained";

/** One training run the comparison expects: `--method method --seed seed --out dir`. */
export interface RunRef {
  method: string;
  seed: number;
  dir: string;
}

export interface RunData {
  ref: RunRef;
  summary: RunSummary;
  config: TrainOptions;
  metrics: MetricRecord[];
}

/**
 * Test perplexity (mean over clients) after a communication round (0: before training). Rounds,
 * not steps, line methods up: every method trains on the same tokens per round (centralized
 * takes all clients' steps in one model).
 */
export interface CurvePoint {
  round: number;
  ppl: number;
}

/** One method over its seeds: per-seed values, in the order of `seeds`. */
export interface MethodResult {
  method: string;
  seeds: number[];
  /** Client name → test perplexity per seed. */
  clientPpl: Map<string, number[]>;
  meanPpl: number[];
  /** The per-round curve averaged over seeds (rounds every seed has). */
  curve: CurvePoint[];
}

export interface Comparison {
  scenario: Scenario;
  ood: boolean;
  seeds: number[];
  baseModel: string;
  /** Options every run's config.json agrees on (method, seed, out and the like left out). */
  settings: [string, unknown][];
  /** Client names in column order. */
  clients: string[];
  pretrained?: MethodResult;
  /** The trained methods, in the order asked for. */
  methods: MethodResult[];
}

/** Where `compare` puts the run of `method` with `seed`. */
export function runDir(out: string, method: string, seed: number): string {
  return `${out}/${method}-s${seed}`;
}

/**
 * The runs a comparison of `scenario` needs: pretrained (seed 0, or every seed where the seed
 * deals the documents), then every method × seed.
 */
export function expectedRuns(
  out: string,
  scenario: Scenario,
  methods: readonly string[],
  seeds: number,
): RunRef[] {
  const refs: RunRef[] = [];
  const add = (method: string, count: number) => {
    for (let seed = 0; seed < count; seed++) {
      refs.push({ method, seed, dir: runDir(out, method, seed) });
    }
  };
  add(PRETRAINED, seedDealsDocuments(scenario) ? seeds : 1);
  for (const method of methods) if (method !== PRETRAINED) add(method, seeds);
  return refs;
}

/**
 * Reads every expected run. Runs without summary.json are not finished: they are listed, all
 * together, in one error. A summary that disagrees with what was asked (method, seed, scenario,
 * ood) is an error too, so a stray directory never slips into the table.
 */
export async function readRuns(
  refs: readonly RunRef[],
  expected: { scenario: Scenario; ood: boolean },
): Promise<RunData[]> {
  const missing: string[] = [];
  const runs: RunData[] = [];
  for (const ref of refs) {
    const summaryText = await readOptional(`${ref.dir}/summary.json`);
    if (summaryText === undefined) {
      missing.push(ref.dir);
      continue;
    }
    const summary = JSON.parse(summaryText) as RunSummary;
    const asked = { method: ref.method, seed: ref.seed, ...expected };
    for (const [key, value] of Object.entries(asked)) {
      const got = summary[key as keyof RunSummary];
      if (got !== value) {
        throw new Error(
          `${ref.dir}/summary.json has ${key} ${JSON.stringify(got)}, expected ${
            JSON.stringify(value)
          }`,
        );
      }
    }
    const config = await readRunConfig(ref.dir);
    const metrics = metricsOnly(await readMetrics(ref.dir));
    runs.push({ ref, summary, config, metrics });
  }
  if (missing.length) {
    throw new Error(`unfinished runs (no summary.json): ${missing.join(", ")}`);
  }
  return runs;
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/**
 * The test-perplexity curve of one run: per round, the mean over clients of their test
 * perplexity. A round
 * evaluated twice (a resumed run that re-did it) counts once: the last record wins.
 */
export function testCurve(metrics: readonly MetricRecord[]): CurvePoint[] {
  const latest = new Map<string, MetricRecord>();
  for (const m of metrics) if (m.split === "test") latest.set(`${m.round}/${m.client}`, m);
  const byRound = new Map<number, MetricRecord[]>();
  for (const m of latest.values()) byRound.set(m.round, [...byRound.get(m.round) ?? [], m]);
  return [...byRound.entries()].sort(([a], [b]) => a - b).map(([round, records]) => ({
    round,
    ppl: mean(records.map((r) => r.ppl)),
  }));
}

/** Settings keys that differ by design between the runs of one comparison. */
const PER_RUN_KEYS = new Set(["method", "seed", "out", "resume", "scenario", "ood"]);

/** Groups runs by method and averages over seeds. `runs` holds pretrained and every method. */
export function aggregate(runs: readonly RunData[]): Comparison {
  if (runs.length === 0) throw new Error("no runs to compare");
  const first = runs[0].summary;
  const bases = [...new Set(runs.map((r) => r.summary.base_model))];
  if (bases.length > 1) {
    throw new Error(`the runs use different base models: ${bases.join(", ")}`);
  }

  const clients: string[] = [];
  const order = [...runs].sort((a, b) =>
    Number(b.ref.method === PRETRAINED) - Number(a.ref.method === PRETRAINED)
  );
  for (const run of order) {
    for (const c of [...run.summary.clients].sort((a, b) => a.id - b.id)) {
      if (!clients.includes(c.name)) clients.push(c.name);
    }
  }

  const methodNames = [...new Set(runs.map((r) => r.ref.method))];
  const results = methodNames.map((method) =>
    methodResult(method, runs.filter((r) => r.ref.method === method))
  );
  const trained = runs.filter((r) => r.ref.method !== PRETRAINED);
  return {
    scenario: first.scenario,
    ood: first.ood,
    seeds: [...new Set(trained.map((r) => r.ref.seed))].sort((a, b) => a - b),
    baseModel: bases[0],
    // Pretrained trains nothing: its training options say nothing about the comparison.
    settings: sharedSettings((trained.length ? trained : runs).map((r) => r.config)),
    clients,
    pretrained: results.find((r) => r.method === PRETRAINED),
    methods: results.filter((r) => r.method !== PRETRAINED),
  };
}

function methodResult(method: string, runs: readonly RunData[]): MethodResult {
  const sorted = [...runs].sort((a, b) => a.ref.seed - b.ref.seed);
  const clientPpl = new Map<string, number[]>();
  for (const run of sorted) {
    for (const c of run.summary.clients) {
      clientPpl.set(c.name, [...clientPpl.get(c.name) ?? [], c.test_ppl]);
    }
  }
  const curves = sorted.map((r) => testCurve(r.metrics));
  const rounds = curves[0].map((p) => p.round)
    .filter((round) => curves.every((curve) => curve.some((p) => p.round === round)));
  const curve = rounds.map((round) => {
    const points = curves.map((c) => c.find((p) => p.round === round)!);
    return { round, ppl: mean(points.map((p) => p.ppl)) };
  });
  return {
    method,
    seeds: sorted.map((r) => r.ref.seed),
    clientPpl,
    meanPpl: sorted.map((r) => r.summary.mean_test_ppl),
    curve,
  };
}

/** The config entries every run agrees on, in the first run's key order. */
function sharedSettings(configs: readonly TrainOptions[]): [string, unknown][] {
  return Object.entries(configs[0]).filter(([key, value]) =>
    !PER_RUN_KEYS.has(key) &&
    configs.every((c) => JSON.stringify(c[key as keyof TrainOptions]) === JSON.stringify(value))
  );
}

export function mean(values: readonly number[]): number {
  return values.reduce((sum, v) => sum + v, 0) / values.length;
}

/** The sample standard deviation (n − 1); undefined for fewer than two values. */
export function sampleStd(values: readonly number[]): number | undefined {
  if (values.length < 2) return undefined;
  const m = mean(values);
  return Math.sqrt(values.reduce((sum, v) => sum + (v - m) ** 2, 0) / (values.length - 1));
}

/** "49.87 ± 0.42", or "49.87" for a single value. */
export function formatMeanStd(values: readonly number[]): string {
  const std = sampleStd(values);
  return std === undefined
    ? mean(values).toFixed(2)
    : `${mean(values).toFixed(2)} ± ${std.toFixed(2)}`;
}

/** The rows of the table: pretrained first (the reference), then the methods. */
function tableRows(c: Comparison): MethodResult[] {
  return c.pretrained ? [c.pretrained, ...c.methods] : c.methods;
}

/**
 * results.md: a heading, the line that says what was compared, and one row per method with
 * "mean ± std" over seeds of test perplexity per client and for the mean over clients; in each
 * column the lowest mean is bold (every row competes, pretrained included).
 */
export function resultsMarkdown(c: Comparison): string {
  const rows = tableRows(c);
  const columns: ((r: MethodResult) => number[] | undefined)[] = [
    ...c.clients.map((name) => (r: MethodResult) => r.clientPpl.get(name)),
    (r: MethodResult) => r.meanPpl,
  ];
  const cells = rows.map((r) => columns.map((column) => column(r)));
  const best = columns.map((_, j) =>
    Math.min(...cells.flatMap((row) => row[j] ? [mean(row[j]!)] : []))
  );
  const table = markdownTable([
    ["method", ...c.clients, "mean"],
    ...rows.map((r, i) => [
      r.method,
      ...cells[i].map((values, j) => {
        if (!values) return "—";
        const text = formatMeanStd(values);
        return mean(values) === best[j] ? `**${text}**` : text;
      }),
    ]),
  ], { align: ["left", ...columns.map(() => "right" as const)] });
  return [
    `# Test perplexity: ${c.scenario}, ${distribution(c.ood)}`,
    "",
    describe(c),
    "",
    table,
    "",
    ...pairedDifferences(c),
    "![mean test perplexity by round](ppl.svg)",
    "",
  ].join("\n");
}

/**
 * Each row's mean over clients minus the first trained method's, seed by seed, as mean ± std
 * over seeds: what moves every method alike from seed to seed (iid's deal of the documents) is
 * taken out, so a difference can be set against its own spread. Only rows run with the same
 * seeds take part; nothing for fewer than two seeds.
 */
function pairedDifferences(c: Comparison): string[] {
  const reference = c.methods[0];
  if (!reference || reference.seeds.length < 2) return [];
  const paired = tableRows(c).filter((r) =>
    r !== reference && JSON.stringify(r.seeds) === JSON.stringify(reference.seeds)
  );
  if (!paired.length) return [];
  const signed = (text: string) => text.startsWith("-") ? text : `+${text}`;
  const table = markdownTable([
    ["method", `mean − ${reference.method}'s`],
    ...paired.map((r) => [
      r.method,
      signed(formatMeanStd(r.meanPpl.map((ppl, i) => ppl - reference.meanPpl[i]))),
    ]),
  ], { align: ["left", "right"] });
  return [
    `Mean over clients minus ${reference.method}'s, paired by seed (mean ± sample std over ` +
    `seeds ${reference.seeds.join(", ")}):`,
    "",
    table,
    "",
  ];
}

function distribution(ood: boolean): string {
  return ood ? "out-of-distribution" : "in-distribution";
}

/** The line saying scenario, ood, seeds, base model and the shared training settings. */
function describe(c: Comparison): string {
  const settings = c.settings.map(([key, value]) =>
    `${key} ${typeof value === "object" ? JSON.stringify(value) : String(value)}`
  ).join(", ");
  const pretrained = !c.pretrained
    ? ""
    : seedDealsDocuments(c.scenario)
    ? "; pretrained per seed too, as the seed deals the documents"
    : "; pretrained is one run (it does not depend on the seed)";
  return `Scenario ${c.scenario}, ${distribution(c.ood)} test sets; seeds ${
    c.seeds.join(", ") || "—"
  } ` +
    `(cells: mean ± sample std of test perplexity over seeds${pretrained}; lower is better, ` +
    `best in bold); base model ${c.baseModel}; settings: ${settings || "—"}.`;
}

// ---- the SVG plot ----

const WIDTH = 800, HEIGHT = 500;
const PLOT = { left: 72, top: 48, right: 600, bottom: 440 };
/** Tableau 10: distinct on white and for most colour-vision deficiencies. */
const PALETTE = [
  "#4e79a7",
  "#f28e2b",
  "#e15759",
  "#76b7b2",
  "#59a14f",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#bab0ac",
];

/**
 * ppl.svg: per method, test perplexity (mean over clients, averaged over seeds) against the
 * client's expert step, as one polyline each; pretrained as a dashed horizontal line; a legend
 * right of the plot. The y axis is logarithmic when the values span more than 3×.
 */
export function perplexitySvg(c: Comparison): string {
  const values = [
    ...c.methods.flatMap((m) => m.curve.map((p) => p.ppl)),
    ...c.pretrained ? [mean(c.pretrained.meanPpl)] : [],
  ];
  const rounds = c.methods.flatMap((m) => m.curve.map((p) => p.round));
  const xMax = Math.max(1, ...rounds);
  // Rounds are whole: no tick between two of them.
  const xTicks = linearTicks(0, xMax, 1);
  const x = (round: number) => PLOT.left + (round / xMax) * (PLOT.right - PLOT.left);

  const lo = values.length ? Math.min(...values) : 1, hi = values.length ? Math.max(...values) : 1;
  const log = lo > 0 && hi / lo > 3;
  // A log axis runs between round values (m × 10^k) around the data, labelled at both ends.
  const [yLo, yHi] = log
    ? [roundLog(lo / 1.05, "down"), roundLog(hi * 1.05, "up")]
    : padRange(lo, hi);
  const scale = log ? Math.log : (v: number) => v;
  const y = (v: number) =>
    PLOT.bottom - (scale(v) - scale(yLo)) / (scale(yHi) - scale(yLo)) * (PLOT.bottom - PLOT.top);
  const yTicks = log
    ? [...new Set([yLo, ...logTicks(yLo, yHi), yHi])].sort((a, b) => a - b)
    : linearTicks(yLo, yHi);

  const f = (v: number) => v.toFixed(1);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" ` +
    `viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${PLOT.left}" y="28" font-size="15">${
      escapeXml(
        `Test perplexity (mean over clients) — ${c.scenario}, ${distribution(c.ood)}, ` +
          `${c.seeds.length} seed${c.seeds.length === 1 ? "" : "s"}`,
      )
    }</text>`,
  ];
  for (const t of xTicks) {
    parts.push(
      `<line x1="${f(x(t))}" y1="${PLOT.top}" x2="${f(x(t))}" y2="${PLOT.bottom}" stroke="#eee"/>`,
      `<line x1="${f(x(t))}" y1="${PLOT.bottom}" x2="${f(x(t))}" y2="${
        PLOT.bottom + 5
      }" stroke="black"/>`,
      `<text x="${f(x(t))}" y="${PLOT.bottom + 19}" text-anchor="middle">${tickLabel(t)}</text>`,
    );
  }
  for (const t of yTicks) {
    parts.push(
      `<line x1="${PLOT.left}" y1="${f(y(t))}" x2="${PLOT.right}" y2="${f(y(t))}" stroke="#eee"/>`,
      `<line x1="${PLOT.left - 5}" y1="${f(y(t))}" x2="${PLOT.left}" y2="${
        f(y(t))
      }" stroke="black"/>`,
      `<text x="${PLOT.left - 8}" y="${f(y(t) + 4)}" text-anchor="end">${tickLabel(t)}</text>`,
    );
  }
  parts.push(
    `<rect x="${PLOT.left}" y="${PLOT.top}" width="${PLOT.right - PLOT.left}" ` +
      `height="${PLOT.bottom - PLOT.top}" fill="none" stroke="black"/>`,
    `<text x="${(PLOT.left + PLOT.right) / 2}" y="${HEIGHT - 22}" text-anchor="middle">` +
      `communication round</text>`,
    `<text transform="translate(20 ${(PLOT.top + PLOT.bottom) / 2}) rotate(-90)" ` +
      `text-anchor="middle">test perplexity${log ? " (log scale)" : ""}</text>`,
  );

  const legend: string[] = [];
  const legendY = (i: number) => PLOT.top + 12 + 22 * i;
  if (c.pretrained) {
    const level = f(y(mean(c.pretrained.meanPpl)));
    const dash = `stroke="#555" stroke-width="2" stroke-dasharray="6 4"`;
    parts.push(`<line x1="${PLOT.left}" y1="${level}" x2="${PLOT.right}" y2="${level}" ${dash}/>`);
    legend.push(
      legendEntry(legendY(0), `<line x1="0" y1="0" x2="28" y2="0" ${dash}/>`, PRETRAINED),
    );
  }
  c.methods.forEach((m, i) => {
    const color = PALETTE[i % PALETTE.length];
    const points = m.curve.map((p) => `${f(x(p.round))},${f(y(p.ppl))}`).join(" ");
    parts.push(
      `<polyline points="${points}" fill="none" stroke="${color}" stroke-width="2" ` +
        `stroke-linejoin="round"/>`,
    );
    legend.push(
      legendEntry(
        legendY(legend.length),
        `<line x1="0" y1="0" x2="28" y2="0" stroke="${color}" stroke-width="2"/>`,
        m.method,
      ),
    );
  });
  parts.push(...legend, "</svg>", "");
  return parts.join("\n");
}

function legendEntry(yPos: number, sample: string, label: string): string {
  return `<g transform="translate(${PLOT.right + 16} ${yPos.toFixed(1)})">${sample}` +
    `<text x="36" y="4">${escapeXml(label)}</text></g>`;
}

function padRange(lo: number, hi: number): [number, number] {
  const pad = hi > lo ? (hi - lo) * 0.08 : Math.max(Math.abs(hi) * 0.05, 1);
  return [lo - pad, hi + pad];
}

/** The nearest value m × 10^k (m in 1..9) at or below / above `v` > 0. */
export function roundLog(v: number, direction: "down" | "up"): number {
  const magnitude = 10 ** Math.floor(Math.log10(v));
  const m = direction === "down" ? Math.floor(v / magnitude) : Math.ceil(v / magnitude);
  return Number((m * magnitude).toPrecision(12));
}

/**
 * Five to ten round-numbered ticks (1, 2 or 5 × 10^k apart) within [lo, hi], no closer than
 * `minStep` (fewer ticks then).
 */
export function linearTicks(lo: number, hi: number, minStep = 0): number[] {
  const raw = (hi - lo) / 8;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = Math.max(minStep, [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw)!);
  const ticks: number[] = [];
  for (let k = Math.ceil(lo / step); k * step <= hi + step * 1e-9; k++) {
    ticks.push(Number((k * step).toPrecision(12)));
  }
  return ticks;
}

/** Ticks at m × 10^k within [lo, hi] for m in 1, 2, 5 — or 1 only / 1..9 to keep 4..10 ticks. */
export function logTicks(lo: number, hi: number): number[] {
  const within = (mantissas: number[]) => {
    const ticks: number[] = [];
    for (let k = Math.floor(Math.log10(lo)); 10 ** k <= hi; k++) {
      for (const m of mantissas) {
        const t = Number((m * 10 ** k).toPrecision(12));
        if (t >= lo && t <= hi) ticks.push(t);
      }
    }
    return ticks;
  };
  const standard = within([1, 2, 5]);
  if (standard.length > 10) return within([1]);
  if (standard.length < 4) return within([1, 2, 3, 4, 5, 6, 7, 8, 9]);
  return standard;
}

function tickLabel(v: number): string {
  return String(Number(v.toPrecision(4)));
}
