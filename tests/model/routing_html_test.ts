// The routing page as text (model/routing_html.ts) and what feeds it: token texts that read
// correctly where byte-level BPE splits a character (model/token_texts.ts), the generalist's
// column of the gates (generalistWeights), the colour scale, markup in tokens and names escaped,
// the page's data and summary rows. What a browser draws from it: tests/cli/routing_html_test.ts.
import { ShapeError } from "../../engine/errors.ts";
import { generalistWeights } from "../../model/routing.ts";
import { GATE_SCALE, gateColour, routingHtml, weightStep } from "../../model/routing_html.ts";
import { tokenTexts } from "../../model/token_texts.ts";
import { loadTokenizer } from "../../model/tokenizer.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { MODEL } from "../fed/tiny_run.ts";
import { client, META } from "./routing_page_fixture.ts";

Deno.test("tokenTexts: a character split across tokens reads whole, joined = decode", async () => {
  const tokenizer = await loadTokenizer(MODEL, 4096);
  const text = "naïve café — 日本語 and 🤖 ok";
  const ids = tokenizer.encode(text);
  // The case is only a test if the tokenizer splits some character across tokens.
  assert(ids.map((id) => tokenizer.decode([id])).join("").includes("\uFFFD"), "no split");
  const texts = tokenTexts(tokenizer, ids);
  assertEquals(texts.length, ids.length);
  assertEquals(texts.join(""), text);
  assert(!texts.some((t) => t.includes("\uFFFD")));
  assert(texts.includes(""), "a token holding a character's first bytes shows nothing");
  // Cut inside a character: the last token holds the rest as U+FFFD, as decode has it.
  const cut = ids.slice(0, texts.indexOf("") + 1);
  assertEquals(tokenTexts(tokenizer, cut).join(""), tokenizer.decode(cut));
  assert(tokenizer.decode(cut).endsWith("\uFFFD"));
  assertEquals(tokenTexts(tokenizer, []), []);
});

Deno.test("generalistWeights: expert 0's gate of the first rows only", () => {
  const gates = new Float32Array([0.9, 0.1, 0.2, 0.8, 0.5, 0.5]);
  assertEquals([...generalistWeights(gates, 2, 2)], [gates[0], gates[2]]);
  assertEquals([...generalistWeights(gates, 3, 2)], [gates[0], gates[3]]);
  assertThrows(() => generalistWeights(gates, 2, 4), ShapeError, "4 tokens × 2 experts from 6");
});

Deno.test("gateColour: specialists blue, even split white, generalist red, linear between", () => {
  assertEquals(gateColour(0), [...GATE_SCALE.specialists]);
  assertEquals(gateColour(0.5), [...GATE_SCALE.even]);
  assertEquals(gateColour(1), [...GATE_SCALE.generalist]);
  assertEquals(gateColour(0.25), [140, 175, 210]); // halfway from (33,102,172) to (247,247,247)
  assertEquals(gateColour(0.75), [213, 136, 145]);
  assertEquals([gateColour(-1), gateColour(2)], [gateColour(0), gateColour(1)]);
  assertEquals([weightStep(0.6125), weightStep(1.5), weightStep(-0.1)], [613, 1000, 0]);
});

/** The JSON the page's script reads. */
function pageData(html: string): { views: string[]; steps: number[][][] } {
  const json = /<script type="application\/json" id="routing-data">(.*?)<\/script>/s.exec(html);
  assert(json, "no data element");
  return JSON.parse(json[1]);
}

Deno.test("routingHtml: markup in tokens, names and paths is text; data and summary per view", () => {
  const texts = [
    "<script>window.hacked = 1</script>",
    " the",
    " &amp;",
    ' "quoted"',
    " cat",
    "<|endoftext|>",
    "",
    "\n",
  ];
  const html = routingHtml(META, [client(texts, "<b>bold</b>&co")]);
  // Each token one span, its text escaped; only the page's own two script elements.
  assertEquals(html.match(/<span class="t[^"]*">/g)?.length, texts.length);
  for (
    const escaped of [
      '<span class="t">&lt;script&gt;window.hacked = 1&lt;/script&gt;</span>',
      '<span class="t function"> the</span>',
      '<span class="t"> &amp;amp;</span>',
      '<span class="t"> &quot;quoted&quot;</span>',
      '<span class="t content"> cat</span>',
      '<span class="t">&lt;|endoftext|&gt;</span><span class="t"></span><span class="t">\n</span>',
      "<h2>Client 0: &lt;b&gt;bold&lt;/b&gt;&amp;co</h2>",
      "<code>runs/&lt;x&gt;&amp;y</code>",
    ]
  ) assert(html.includes(escaped), `missing ${escaped}`);
  assertEquals(html.match(/<script/g)?.length, 2);
  assert(!html.includes("<b>bold"));

  // Views: each layer, then their mean; per view, each token's weight in steps of 0.001.
  const data = pageData(html);
  assertEquals(data.views, ["layer 0", "layer 5", "mean over layers"]);
  const n = texts.length;
  const w = (p: number) => (p + 1) / (n + 1);
  assertEquals(data.steps, [[
    texts.map((_, p) => weightStep(Math.fround(w(p)))),
    texts.map((_, p) => weightStep(Math.fround(1 - w(p)))),
    texts.map(() => 500),
  ]]);
  // The summary: a row per view; " the" (p = 1) is the function word, " cat" (p = 4) content.
  const rows = [...html.matchAll(/<tr data-view="(\d)">(.*?)<\/tr>/g)].map((
    [, view, row],
  ) => [view, ...[...row.matchAll(/<t[hd][^>]*>([^<]*)<\/t[hd]>/g)].map((m) => m[1])]);
  const [fn, ct] = [w(1), w(4)];
  assertEquals(rows, [
    ["0", "layer 0", "2", fn.toFixed(3), ct.toFixed(3), "-" + (ct - fn).toFixed(3)],
    ["1", "layer 5", "2", (1 - fn).toFixed(3), (1 - ct).toFixed(3), "+" + (ct - fn).toFixed(3)],
    ["2", "mean", "", "0.500", "0.500", "+0.000"],
  ]);

  // One layer: no mean view or row.
  const single = client(texts);
  single.layers.pop();
  single.shown.generalist.pop();
  const one = routingHtml(META, [single]);
  assertEquals(pageData(one).views, ["layer 0"]);
  assertEquals(one.match(/<tr data-view/g)?.length, 1);
});

Deno.test("routingHtml: clients must report the same layers, with gates for every token", () => {
  const a = client([" the", " cat"]);
  const b = { ...client([" a", " dog"]), client: 1 };
  b.layers = b.layers.slice(1);
  assertThrows(() => routingHtml(META, [a, b]), RangeError, "client 1 reports layers 5");
  const c = client([" the", " cat"]);
  c.shown.generalist[1] = c.shown.generalist[1].subarray(1);
  assertThrows(() => routingHtml(META, [c]), RangeError, "client 0 shows 2 texts");
});
