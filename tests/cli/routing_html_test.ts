// `deno task routing --html` end to end, checked by what headless Chromium draws: the page of a
// run folder written by hand (tests/cli/routing_run.ts) loads nothing from outside; per client it
// shows the tokens analysed, whose texts join to the decoded test split; every token's shade is
// the colour scale's at its weight, for each view of the layer selector, and those weights give
// back routing.json's numbers (per class in every layer, per word in the first); the summary
// table shows routing.json's numbers. Markup in a token shows as text and never runs.
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { Page } from "playwright-core";
import { CHROMIUM_ARGS, DEFAULT_CHROMIUM } from "../../cli/browser.ts";
import { TRAIN_DEFAULTS as DEFAULTS } from "../../fed/options.ts";
import { loadScenario } from "../../fed/scenarios.ts";
import { tokenStream } from "../../model/pretrain_data.ts";
import { fixed, type RoutingRow, signed, streamWords } from "../../model/routing.ts";
import { gateColour, routingHtml, WEIGHT_STEPS } from "../../model/routing_html.ts";
import { loadTokenizer } from "../../model/tokenizer.ts";
import { assert, assertEquals } from "../assert.ts";
import { MODEL } from "../fed/tiny_run.ts";
import { client, META } from "../model/routing_page_fixture.ts";
import { routing, writeRun } from "./routing_run.ts";

const CHROMIUM = Deno.env.get("CHROMIUM") ?? DEFAULT_CHROMIUM;
/** Analysed tokens per client, all of them shown (the page shows 400 by default). */
const MAX_TOKENS = 300;
/** The page draws weights rounded to steps of 1/WEIGHT_STEPS: a mean of them is that close. */
const ROUNDING = 0.5 / WEIGHT_STEPS + 1e-9;

interface Report {
  rows: RoutingRow[];
  top_words: {
    client: number;
    function: { word: string; tokens: number; generalist_weight: number }[];
    content: { word: string; tokens: number; generalist_weight: number }[];
  }[];
}

/** What the page draws for one client. */
interface Drawn {
  texts: string[];
  kinds: ("function" | "content" | null)[];
  colours: string[];
  rows: { cells: string[]; selected: boolean }[];
}

const DRAWN = `[...document.querySelectorAll("section.client")].map((section) => {
  const spans = [...section.querySelectorAll(".text .t")];
  const has = (span, name) => span.classList.contains(name);
  return {
    texts: spans.map((span) => span.textContent),
    kinds: spans.map((s) => has(s, "function") ? "function" : has(s, "content") ? "content" : null),
    colours: spans.map((span) => getComputedStyle(span).backgroundColor),
    rows: [...section.querySelectorAll("tbody tr")].map((row) => ({
      cells: [...row.children].map((cell) => cell.textContent),
      selected: row.classList.contains("selected"),
    })),
  };
})`;

/** The page's data: the views and, per client and view, each token's weight in steps. */
const DATA = `JSON.parse(document.getElementById("routing-data").textContent)`;

const rgb = (step: number) => `rgb(${gateColour(step / WEIGHT_STEPS).join(", ")})`;
const meanOf = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** `fn` on a new page of headless Chromium; an error in the page's script fails the test. */
async function inChromium(fn: (page: Page) => Promise<void>): Promise<void> {
  const { chromium } = await import("playwright-core");
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await fn(page);
    assertEquals(errors, []);
  } finally {
    await browser.close();
  }
}

Deno.test({
  name:
    "routing --html: every token shaded by its gate in each view; the summary is routing.json's",
  sanitizeResources: false,
  fn: async () => {
    // comigs-1gxs with E = 1 (generalist only: every gate 1) and E = 3 (k = 2, random routers).
    const dir = await writeRun(await Deno.makeTempDir(), "comigs-1gxs", [1, 3]);
    const run = await routing(["--run", dir, "--max-tokens", String(MAX_TOKENS), "--html"]);
    assertEquals(run.code, 0, run.stderr);
    const report: Report = JSON.parse(await Deno.readTextFile(join(dir, "routing.json")));

    // The tokens each client analysed, their texts and word classes, found here independently.
    const tokenizer = await loadTokenizer(MODEL, 4096);
    const corpora = await loadScenario("topics", { clients: 2, ood: false, seed: DEFAULTS.seed });
    const streams = corpora.map((c) => tokenStream(tokenizer, c.test).subarray(0, MAX_TOKENS + 1));
    const words = streams.map((s) =>
      streamWords(Array.from(s, (id) => tokenizer.decode([id])), 16)
    );

    const url = pathToFileURL(join(dir, "routing.html")).href;
    let layer2: number[][] = [];
    await inChromium(async (page) => {
      const requests: string[] = [];
      page.on("request", (r) => requests.push(r.url()));
      await page.goto(url);
      const { views, steps } = await page.evaluate(DATA) as {
        views: string[];
        steps: number[][][];
      };
      assertEquals(views, ["layer 0", "layer 1", "layer 2", "layer 3", "mean over layers"]);
      layer2 = steps.map((s) => s[2]);

      const colourings: string[][][] = [];
      for (const [view, label] of views.entries()) {
        await page.selectOption("#view", String(view));
        const drawn = await page.evaluate(DRAWN) as Drawn[];
        assertEquals(drawn.length, 2);
        colourings.push(drawn.map((d) => d.colours));
        for (const [c, d] of drawn.entries()) {
          // Every analysed token, as its text, of its word class.
          assertEquals(d.texts.length, MAX_TOKENS);
          assertEquals(d.texts.join(""), tokenizer.decode(Array.from(streams[c].subarray(0, -1))));
          assertEquals(d.kinds, words[c].map((w) => w?.kind ?? null));
          // Each token drawn in the scale's colour at its weight in this view.
          const weights = steps[c][view];
          assertEquals(d.colours, weights.map(rgb), `client ${c}, ${label}`);
          if (c === 0) assert(weights.every((q) => q === WEIGHT_STEPS), "E = 1: every gate 1");

          // The summary row of this view is marked; every row shows routing.json's numbers.
          const rows = report.rows.filter((r) => r.client === c);
          const weight = (r: RoutingRow, kind: "function" | "content") =>
            r[kind].generalist_weight!;
          const cells = (fn: number, content: number) => [
            fixed(fn),
            fixed(content),
            signed(fn - content),
          ];
          assertEquals(d.rows.map((r) => r.cells), [
            ...rows.map((r) => [
              `layer ${r.layer}`,
              String(r.experts),
              ...cells(weight(r, "function"), weight(r, "content")),
            ]),
            [
              "mean",
              "",
              ...cells(
                meanOf(rows.map((r) => weight(r, "function"))),
                meanOf(rows.map((r) => weight(r, "content"))),
              ),
            ],
          ]);
          assertEquals(d.rows.map((r) => r.selected), views.map((_, k) => k === view));

          // The weights drawn give back routing.json's means over each class: the layer's, or
          // for the mean view, the mean of the layers'.
          for (const kind of ["function", "content"] as const) {
            const own = weights.filter((_, p) => words[c][p]?.kind === kind);
            const expected = view < rows.length
              ? weight(rows[view], kind)
              : meanOf(rows.map((r) => weight(r, kind)));
            const got = meanOf(own) / WEIGHT_STEPS;
            assert(Math.abs(got - expected) <= ROUNDING, `${c} ${label} ${kind}: ${got}`);
          }
          if (view === 0) {
            // ... and, in the first layer, the means of the most frequent words of each class.
            const top = report.top_words[c];
            for (const w of [...top.function, ...top.content]) {
              const own = weights.filter((_, p) => words[c][p]?.word === w.word);
              assertEquals(own.length, w.tokens, w.word);
              const got = meanOf(own) / WEIGHT_STEPS;
              assert(Math.abs(got - w.generalist_weight) <= ROUNDING, `${c} ${w.word}: ${got}`);
            }
          }
        }
      }
      // The mean view is each token's mean over the layers (two roundings: one step apart).
      for (const [c, s] of steps.entries()) {
        s[4].forEach((q, p) => {
          const layers = [0, 1, 2, 3].map((l) => s[l][p]);
          assert(Math.abs(q - meanOf(layers)) <= 1, `client ${c} token ${p}`);
        });
      }
      // Switching the view redraws: the routed client's shades differ between every two views.
      for (let a = 0; a < views.length; a++) {
        for (let b = a + 1; b < views.length; b++) {
          const changed = colourings[a][1].filter((x, p) => x !== colourings[b][1][p]).length;
          assert(changed > MAX_TOKENS / 2, `views ${a} and ${b}: ${changed} tokens redrawn`);
        }
      }
      // Self-contained: the page itself is the only thing loaded.
      assertEquals([...new Set(requests)], [url]);
    });

    // --html-tokens shows the first N only; --layer L offers that layer alone, same shades.
    const short = await routing([
      "--run",
      dir,
      "--max-tokens",
      String(MAX_TOKENS),
      "--layer",
      "2",
      "--html",
      "--html-tokens",
      "50",
    ]);
    assertEquals(short.code, 0, short.stderr);
    await inChromium(async (page) => {
      await page.goto(url);
      const { views } = await page.evaluate(DATA) as { views: string[] };
      assertEquals(views, ["layer 2"]);
      const drawn = await page.evaluate(DRAWN) as Drawn[];
      for (const [c, d] of drawn.entries()) {
        assertEquals(d.colours, layer2[c].slice(0, 50).map(rgb));
        assertEquals(d.rows.map((r) => [r.cells[0], r.selected]), [["layer 2", true]]);
      }
    });
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("routing page: markup in a token or a name shows as text in a browser, never runs", async () => {
  const texts = [
    "<script>window.hacked = 1</script>",
    " &amp;",
    '<img src="x" onerror="window.hacked = 2">',
    " the",
    "<|endoftext|>",
    "",
  ];
  await inChromium(async (page) => {
    await page.setContent(routingHtml(META, [client(texts, "<i>press</i> & co")]));
    assertEquals(
      await page.evaluate(`[...document.querySelectorAll(".text .t")].map((s) => s.textContent)`),
      texts,
    );
    const h2 = await page.evaluate(`document.querySelector("h2").textContent`);
    assertEquals(h2, "Client 0: <i>press</i> & co");
    assertEquals(await page.evaluate(`document.querySelector("code").textContent`), META.run);
    assertEquals(await page.evaluate("window.hacked"), undefined);
  });
});
