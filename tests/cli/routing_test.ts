// `deno task routing` end to end on a run folder written by hand (config.json as the trainer
// writes it, the shipped base model, random adapters): the report files exist, stdout is the
// Markdown, the numbers are consistent with the test split and with a --layer run; every bad
// input is one clear message (checked in-process, and once through a real process).
import { join } from "node:path";
import { parseInvocation } from "../../cli/routing.ts";
import { UsageError } from "../../cli/args.ts";
import { TRAIN_DEFAULTS as DEFAULTS } from "../../fed/options.ts";
import { loadScenario } from "../../fed/scenarios.ts";
import { dimsOf } from "../../model/base.ts";
import { readConfig } from "../../model/checkpoint.ts";
import { tokenStream } from "../../model/pretrain_data.ts";
import { type RoutingRow, streamWords } from "../../model/routing.ts";
import { loadTokenizer } from "../../model/tokenizer.ts";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { MODEL } from "../fed/tiny_run.ts";
import { routing, writeRun } from "./routing_run.ts";

const MAX_TOKENS = 300;

interface Report {
  rows: RoutingRow[];
  top_words: {
    client: number;
    layer: number;
    function: { word: string; tokens: number; generalist_weight: number }[];
    content: { word: string; tokens: number; generalist_weight: number }[];
  }[];
}

Deno.test({
  name: "routing reports every client and layer of a run, consistent with its test split",
  sanitizeResources: false,
  fn: async () => {
    // comigs-1gxs with E = 1 (generalist only) and E = 3 (k = 2).
    const dir = await writeRun(await Deno.makeTempDir(), "comigs-1gxs", [1, 3]);
    const { code, stdout, stderr } = await routing([
      "--run",
      dir,
      "--max-tokens",
      String(MAX_TOKENS),
    ]);
    assertEquals(code, 0, stderr);
    const markdown = await Deno.readTextFile(join(dir, "routing.md"));
    assertEquals(stdout, markdown + "\n");
    const report: Report = JSON.parse(await Deno.readTextFile(join(dir, "routing.json")));
    const n = dimsOf(await readConfig(MODEL)).layers;
    assertEquals(
      report.rows.map((r) => [r.client, r.layer, r.experts]),
      [0, 1].flatMap((c) => [...Array(n).keys()].map((l) => [c, l, [1, 3][c]])),
    );

    // The counts are the whole words among the first MAX_TOKENS inputs of each client's test
    // split, the same in every layer.
    const tokenizer = await loadTokenizer(MODEL, 4096);
    const corpora = await loadScenario("topics", { clients: 2, ood: false, seed: DEFAULTS.seed });
    for (const [client, corpus] of corpora.entries()) {
      const stream = tokenStream(tokenizer, corpus.test).subarray(0, MAX_TOKENS + 1);
      const words = streamWords(Array.from(stream, (id) => tokenizer.decode([id])), 16);
      const count = (kind: string) => words.filter((w) => w?.kind === kind).length;
      assert(count("function") > 20 && count("content") > 20, "enough words of each class");
      for (const row of report.rows.filter((r) => r.client === client)) {
        assertEquals(row.name, corpus.name);
        assertEquals([row.function.tokens, row.content.tokens], [
          count("function"),
          count("content"),
        ]);
        assert(row.function.tokens + row.content.tokens <= MAX_TOKENS);
      }
    }
    for (const row of report.rows) {
      for (const stats of [row.function, row.content]) {
        for (const value of [stats.generalist_weight, stats.generalist_top1]) {
          assert(value !== null && value >= 0 && value <= 1, `${JSON.stringify(row)}`);
        }
        if (row.experts === 1) {
          assertEquals([stats.generalist_weight, stats.generalist_top1], [1, 1]);
        }
      }
    }
    // With a router, the generalist's weight varies between tokens, and each block (its own
    // router) gives other numbers.
    const routed = report.rows.filter((r) => r.experts === 3);
    assert(routed.some((r) => r.content.generalist_weight! < 0.99));
    assertEquals(new Set(routed.map((r) => r.function.generalist_weight)).size, n);
    // Top words: the first layer, most frequent first, counts within their class's.
    for (const top of report.top_words) {
      const row = report.rows.find((r) => r.client === top.client && r.layer === 0)!;
      assertEquals(top.layer, 0);
      for (const kind of ["function", "content"] as const) {
        const counts = top[kind].map((w) => w.tokens);
        assertEquals(counts, [...counts].sort((a, b) => b - a));
        assert(counts.length === 10 && counts.reduce((a, b) => a + b) <= row[kind].tokens);
        assert(top[kind].every((w) => w.generalist_weight >= 0 && w.generalist_weight <= 1));
      }
    }
    for (const r of report.rows) {
      const cells = [
        `${r.client} ${r.name}`,
        r.layer,
        r.experts,
        r.function.tokens,
        r.content.tokens,
      ];
      assert(markdown.includes(`| ${cells.join(" | ")} |`), `no table row for ${cells}`);
    }

    // --layer 2 reports that block only, with the same numbers.
    const single = await routing([
      "--run",
      dir,
      "--max-tokens",
      String(MAX_TOKENS),
      "--layer",
      "2",
    ]);
    assertEquals(single.code, 0, single.stderr);
    const layer2: Report = JSON.parse(await Deno.readTextFile(join(dir, "routing.json")));
    assertEquals(layer2.rows, report.rows.filter((r) => r.layer === 2));
    assertEquals(layer2.top_words.map((t) => t.layer), [2, 2]);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("routing: bad flags and run folders are clear errors naming the problem", async () => {
  const root = await Deno.makeTempDir();
  const finished = await writeRun(join(root, "finished"), "comigs-1g1s", [2, 2]);
  const unfinished = await writeRun(join(root, "unfinished"), "comigs-1g1s", [2, 2], [
    true,
    false,
  ]);
  const fedavg = await writeRun(join(root, "fedavg"), "fedavg", [2, 2], [false, false]);
  const pretrained = await writeRun(join(root, "pretrained"), "pretrained", [2, 2], [false, false]);
  const noConfig = join(root, "empty");
  await Deno.mkdir(noConfig);
  const badJson = join(root, "bad-json");
  await Deno.mkdir(badJson);
  await Deno.writeTextFile(join(badJson, "config.json"), "{ not json");
  const notRun = join(root, "not-run");
  await Deno.mkdir(notRun);
  await Deno.writeTextFile(join(notRun, "config.json"), JSON.stringify({ method: "local" }));
  const cases: [string[], new (...args: never[]) => Error, string][] = [
    [[], UsageError, "--run is required"],
    [["--bogus"], UsageError, "Unknown option '--bogus'"],
    [["--run", join(root, "none")], UsageError, `--run ${join(root, "none")}: no such folder`],
    [["--run", noConfig], Error, `${join(noConfig, "config.json")}: cannot read`],
    [["--run", badJson], Error, `${join(badJson, "config.json")}: cannot read`],
    [["--run", notRun], Error, "bad or missing: scenario, model, clients, batch, seq, seed, ood"],
    [["--run", pretrained], Error, `method "pretrained" trains no adapters`],
    [["--run", fedavg], Error, `method "fedavg" has no learned router`],
    [
      ["--run", unfinished],
      Error,
      `${join(unfinished, "clients", "1", "adapters.safetensors")} is missing: the run has not`,
    ],
    [["--run", finished, "--layer", "4"], UsageError, "--layer must be an integer in 0..3"],
    [["--run", finished, "--layer", "1.5"], UsageError, "--layer must be an integer ≥ 0"],
    [["--run", finished, "--layer=-1"], UsageError, "--layer must be an integer ≥ 0"],
    [["--run", finished, "--max-tokens", "0"], UsageError, "--max-tokens must be an integer ≥ 1"],
    [["--run", finished, "--max-tokens", "many"], UsageError, "--max-tokens must be an integer"],
    [["--run", finished, "--html-tokens", "5"], UsageError, "--html-tokens sets the page's length"],
    [
      ["--run", finished, "--html", "--html-tokens", "0"],
      UsageError,
      "--html-tokens must be an integer ≥ 1",
    ],
  ];
  for (const [args, type, message] of cases) {
    await assertRejects(() => parseInvocation(args), type, message);
  }
  const { plan, html } = await parseInvocation(["--run", finished, "--layer", "3"]) as {
    plan: { layers: number[]; maxTokens: number; shownTokens: number };
    html: boolean;
  };
  assertEquals([plan.layers, plan.maxTokens, plan.shownTokens, html], [[3], 20_000, 400, false]);
  const page = await parseInvocation(["--run", finished, "--html", "--html-tokens", "50"]) as {
    plan: { shownTokens: number };
    html: boolean;
  };
  assertEquals([page.plan.shownTokens, page.html], [50, true]);

  // Through a real process: one line on stderr, no stack trace, exit code 2 for a usage error
  // and 1 for a run that cannot be analysed.
  for (
    const [args, exit] of [[["--run", fedavg], 1], [
      ["--run", finished, "--layer", "x"],
      2,
    ]] as const
  ) {
    const { code, stderr } = await routing([...args]);
    assertEquals(code, exit, stderr);
    assert(stderr.startsWith("error: ") && !stderr.includes("    at "), stderr);
  }
  await Deno.remove(root, { recursive: true });
});
