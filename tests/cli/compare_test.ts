// `deno task compare`: its flags, how it decides to train, resume or skip a run, and the report
// (fed/report.ts) built from synthetic run directories written here — no training, no GPU.
// The report tests check the numbers (mean ± sample std over seeds), the bold best per column,
// the error naming unfinished runs, the curves, and that the SVG is well-formed with one line
// per method and the same bytes for the same inputs.
import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertThrows } from "../assert.ts";
import { UsageError } from "../../cli/args.ts";
import {
  type CompareOptions,
  MAIN_METHODS,
  parseInvocation,
  runState,
  trainArgs,
} from "../../cli/compare.ts";
import {
  aggregate,
  type Comparison,
  expectedRuns,
  logTicks,
  perplexitySvg,
  readRuns,
  resultsMarkdown,
  roundLog,
  sampleStd,
  testCurve,
} from "../../fed/report.ts";
import type { Method } from "../../fed/methods.ts";
import type { MetricRecord, Summary as RunSummary } from "../../fed/records.ts";
import type { Scenario } from "../../fed/scenarios.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

function options(args: string[]): CompareOptions {
  const invocation = parseInvocation(args);
  assert("options" in invocation, "expected options");
  return invocation.options;
}

Deno.test("flags: defaults, pass-through options, and usage errors listing what is allowed", () => {
  assertEquals(options(["--scenario", "topics"]), {
    scenario: "topics",
    seeds: 3,
    methods: MAIN_METHODS,
    ood: false,
    out: "runs/compare-topics",
    jobs: 1,
    training: [],
  });
  const o = options([
    "--scenario",
    "domains",
    "--ood",
    "--seeds",
    "1",
    "--methods",
    "fedavg,local,fedavg",
    "--rounds",
    "4",
    "--lr",
    "3e-4",
    "--router-steps",
    "0",
    "--train-tokens",
    "20000,all,all,all",
    "--lb-coef",
    "0",
    "--lora-targets",
    "q,v",
    "--router-on-train",
  ]);
  assertEquals(
    [o.out, o.seeds, o.methods, o.training],
    ["runs/compare-domains-ood", 1, ["fedavg", "local"], [
      "--rounds",
      "4",
      "--lr",
      "3e-4",
      "--router-steps",
      "0",
      "--router-on-train",
      "--train-tokens",
      "20000,all,all,all",
      "--lb-coef",
      "0",
      "--lora-targets",
      "q,v",
    ]],
  );
  assertEquals(parseInvocation(["--help"]), { help: true });
  assertThrows(() => parseInvocation([]), UsageError, "topics, languages, domains, iid");
  assertThrows(() => parseInvocation(["--scenario", "news"]), UsageError, 'got "news"');
  assertThrows(
    () => parseInvocation(["--scenario", "iid", "--lora-targets", "q,z"]),
    UsageError,
    '--lora-targets "z" is not an attention projection',
  );
  assertThrows(() => parseInvocation(["--scenario", "iid", "--seeds", "0"]), UsageError, "1..100");
  assertEquals(options(["--scenario", "iid", "--jobs", "2"]).jobs, 2);
  for (const jobs of ["0", "17", "1.5", "two"]) {
    assertThrows(
      () => parseInvocation(["--scenario", "iid", "--jobs", jobs]),
      UsageError,
      `--jobs must be an integer in 1..16, got "${jobs}"`,
    );
  }
  assertThrows(
    () => parseInvocation(["--scenario", "iid", "--seeds", "2.5"]),
    UsageError,
    "--seeds",
  );
  assertThrows(
    () => parseInvocation(["--scenario", "iid", "--methods", "fedavg,fedprox"]),
    UsageError,
    'unknown "fedprox"; allowed: comigs-1g1s',
  );
  assertThrows(
    () => parseInvocation(["--scenario", "iid", "--rounds", "0"]),
    UsageError,
    "--rounds must be an integer in 1..100000, got 0",
  );
  assertThrows(
    () => parseInvocation(["--scenario", "iid", "--lr", "-1"]),
    UsageError,
    "--lr must be a number in (0, 10), got -1",
  );
  assertThrows(
    () => parseInvocation(["--scenario", "iid", "--train-tokens", "20000,some"]),
    UsageError,
    '--train-tokens "20000,some": each entry must be an integer ≥ 2 or "all"',
  );
  assertThrows(
    () => parseInvocation(["--scenario", "iid", "--train-tokens", "20000,all"]),
    UsageError,
    "lists 2 entries for 4 clients",
  );
  assertThrows(() => parseInvocation(["--scenario", "iid", "--resume", "x"]), UsageError, "resume");
});

Deno.test("a bad flag ends in one message and exit code 2, not a stack trace", async () => {
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}cli/compare.ts`, "--scenario", "moon"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(stderr);
  assertEquals(code, 2, text);
  assert(
    text.startsWith('error: --scenario must be one of topics, languages, domains, iid, got "moon"'),
    text,
  );
  assert(!text.includes("    at "), text);
});

Deno.test("runs: pretrained once, new runs get every option, interrupted ones only --resume", async () => {
  const o = options([
    "--scenario",
    "topics",
    "--seeds",
    "2",
    "--methods",
    "fedavg,pretrained",
    "--ood",
    "--seq",
    "64",
  ]);
  const refs = expectedRuns("out", o.scenario, o.methods, o.seeds);
  assertEquals(refs.map((r) => r.dir), ["out/pretrained-s0", "out/fedavg-s0", "out/fedavg-s1"]);
  assertEquals(trainArgs(o, refs[2], "new"), [
    "--method",
    "fedavg",
    "--scenario",
    "topics",
    "--seed",
    "1",
    "--out",
    "out/fedavg-s1",
    "--ood",
    "--seq",
    "64",
  ]);
  assertEquals(trainArgs(o, refs[2], "interrupted"), ["--resume", "out/fedavg-s1"]);
  // iid's seed deals the documents: the base is tested on each seed's deal.
  assertEquals(expectedRuns("out", "iid", ["pretrained", "fedavg"], 2).map((r) => r.dir), [
    "out/pretrained-s0",
    "out/pretrained-s1",
    "out/fedavg-s0",
    "out/fedavg-s1",
  ]);

  const dir = await Deno.makeTempDir();
  assertEquals(await runState(join(dir, "absent")), "new");
  await Deno.writeTextFile(join(dir, "config.json"), "{}");
  assertEquals(await runState(dir), "interrupted");
  await Deno.writeTextFile(join(dir, "summary.json"), "{}");
  assertEquals(await runState(dir), "finished");
  await Deno.remove(dir, { recursive: true });
});

// ---- synthetic runs ----

const CLIENTS = ["news", "sport"];
const CONFIG = {
  rounds: 2,
  localSteps: 5,
  batch: 8,
  seq: 128,
  lr: 0.001,
  model: "models/base",
  clients: 2,
};

/**
 * Writes a finished run: per client, test perplexity `start` at round 0 falling linearly to its
 * final value at round 2 (5 expert steps a round), and the summary those numbers give.
 */
async function writeRun(
  out: string,
  method: string,
  seed: number,
  finalPpl: number[],
  { start = 100, scenario = "topics", config = {} as Record<string, unknown> } = {},
): Promise<void> {
  const dir = join(out, `${method}-s${seed}`);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(
    join(dir, "config.json"),
    JSON.stringify({ method, scenario, ood: false, seed, ...CONFIG, ...config, out: dir }),
  );
  const metrics: MetricRecord[] = [];
  const rounds = method === "pretrained" ? 0 : 2;
  for (let round = 0; round <= rounds; round++) {
    finalPpl.forEach((ppl, client) => {
      const value = rounds ? start + (ppl - start) * round / rounds : ppl;
      const record = {
        round,
        step: 5 * round,
        client,
        split: "test",
        loss: Math.log(value),
        ppl: value,
        wall_s: round,
      };
      metrics.push(record as MetricRecord);
      metrics.push({ ...record, split: "val", ppl: 1e6 } as MetricRecord);
    });
  }
  await Deno.writeTextFile(
    join(dir, "metrics.jsonl"),
    metrics.map((m) => JSON.stringify(m) + "\n").join(""),
  );
  const summary: RunSummary = {
    method: method as Method,
    scenario: scenario as Scenario,
    ood: false,
    seed,
    base_model: "models/base",
    clients: finalPpl.map((ppl, id) => ({
      id,
      name: CLIENTS[id],
      n_experts: 2,
      train_tokens: 1000,
      test_ppl: ppl,
    })),
    mean_test_ppl: finalPpl.reduce((a, b) => a + b) / finalPpl.length,
    pretrained_mean_test_ppl: 100,
  };
  await Deno.writeTextFile(join(dir, "summary.json"), JSON.stringify(summary));
}

/**
 * pretrained (100, 100); fedavg seeds (40, 60), (44, 64), (42, 62) starting at 100; local
 * (30, 90) for every seed, starting at 400.
 */
async function writeComparison(out: string): Promise<Comparison> {
  await writeRun(out, "pretrained", 0, [100, 100]);
  await writeRun(out, "fedavg", 0, [40, 60]);
  await writeRun(out, "fedavg", 1, [44, 64]);
  await writeRun(out, "fedavg", 2, [42, 62]);
  for (const seed of [0, 1, 2]) {
    await writeRun(out, "local", seed, [30, 90], { start: 400, config: { experts: 1 } });
  }
  const runs = await readRuns(expectedRuns(out, "topics", ["fedavg", "local"], 3), {
    scenario: "topics",
    ood: false,
  });
  return aggregate(runs);
}

Deno.test("report: mean ± sample std over seeds, the best mean of each column in bold", async () => {
  const out = await Deno.makeTempDir();
  const c = await writeComparison(out);
  assertEquals(sampleStd([40, 44, 42]), 2); // Σ(x − 42)² = 8, / (3 − 1) = 4
  assertEquals(c.clients, CLIENTS);
  assertEquals(c.seeds, [0, 1, 2]);
  const table = resultsMarkdown(c).split("\n").filter((line) => line.startsWith("|"));
  assertEquals(table, [
    "| method | news | sport | mean |",
    "| --- | ---: | ---: | ---: |",
    "| pretrained | 100.00 | 100.00 | 100.00 |",
    // fedavg's means over clients are 50, 54, 52: mean 52, std 2.
    "| fedavg | 42.00 ± 2.00 | **62.00 ± 2.00** | **52.00 ± 2.00** |",
    "| local | **30.00 ± 0.00** | 90.00 ± 0.00 | 60.00 ± 0.00 |",
    // Paired by seed against the first method: local's 60 minus fedavg's 50, 54, 52. Pretrained
    // (seed 0 only) pairs with no other seed.
    "| method | mean − fedavg's |",
    "| --- | ---: |",
    "| local | +8.00 ± 2.00 |",
  ]);
  const text = resultsMarkdown(c);
  assert(text.includes("Scenario topics, in-distribution test sets; seeds 0, 1, 2"), text);
  assert(text.includes("pretrained is one run (it does not depend on the seed)"), text);
  assert(text.includes("base model models/base"), text);
  // `experts` differs between methods and `out` between runs: only shared settings are listed.
  assert(
    text.includes(
      "settings: rounds 2, localSteps 5, batch 8, seq 128, lr 0.001, model models/base, clients 2,",
    ),
    text,
  );
  await Deno.remove(out, { recursive: true });
});

Deno.test("report: one seed gives plain means", async () => {
  const out = await Deno.makeTempDir();
  await writeRun(out, "pretrained", 0, [100, 100]);
  await writeRun(out, "fedavg", 0, [40, 61]);
  const c = aggregate(
    await readRuns(expectedRuns(out, "topics", ["fedavg"], 1), { scenario: "topics", ood: false }),
  );
  assert(
    resultsMarkdown(c).includes("| fedavg | **40.00** | **61.00** | **50.50** |"),
    resultsMarkdown(c),
  );
  assert(!resultsMarkdown(c).includes("paired by seed"), resultsMarkdown(c));
  await Deno.remove(out, { recursive: true });
});

Deno.test("report: iid's pretrained row is over its seeds, and says why", async () => {
  const out = await Deno.makeTempDir();
  const scenario = "iid";
  for (const [seed, ppl] of [100, 104, 102].entries()) {
    await writeRun(out, "pretrained", seed, [ppl, ppl], { scenario });
    await writeRun(out, "fedavg", seed, [40, 60], { scenario });
    await writeRun(out, "local", seed, [30, 30], { scenario });
  }
  const c = aggregate(
    await readRuns(expectedRuns(out, scenario, ["fedavg", "local"], 3), { scenario, ood: false }),
  );
  const text = resultsMarkdown(c);
  assert(text.includes("| pretrained | 102.00 ± 2.00 | 102.00 ± 2.00 | 102.00 ± 2.00 |"), text);
  assert(text.includes("pretrained per seed too, as the seed deals the documents"), text);
  // Paired against fedavg's 50 in every seed.
  assert(text.includes("| pretrained | +52.00 ± 2.00 |\n| local | -20.00 ± 0.00 |"), text);
  await Deno.remove(out, { recursive: true });
});

Deno.test("report: unfinished runs are named in one error; a mismatched summary is an error", async () => {
  const out = await Deno.makeTempDir();
  await writeRun(out, "pretrained", 0, [100, 100]);
  await writeRun(out, "fedavg", 0, [40, 60]);
  await Deno.mkdir(join(out, "fedavg-s1")); // started, interrupted before its summary
  await assertRejects(
    () => readRuns(expectedRuns(out, "topics", ["fedavg"], 3), { scenario: "topics", ood: false }),
    Error,
    `unfinished runs (no summary.json): ${join(out, "fedavg-s1")}, ${join(out, "fedavg-s2")}`,
  );
  await assertRejects(
    () =>
      readRuns(expectedRuns(out, "languages", ["fedavg"], 1), {
        scenario: "languages",
        ood: false,
      }),
    Error,
    'has scenario "topics", expected "languages"',
  );
  await Deno.remove(out, { recursive: true });
});

Deno.test("curves: mean over clients per round, the last record of a re-evaluated round wins", () => {
  const row = (round: number, client: number, ppl: number) =>
    ({ round, step: 10 * round, client, split: "test", loss: 0, ppl, wall_s: 0 }) as MetricRecord;
  assertEquals(
    testCurve([row(0, 0, 80), row(0, 1, 120), row(1, 0, 50), row(1, 1, 70), row(1, 1, 60)]),
    [{ round: 0, ppl: 100 }, { round: 1, ppl: 55 }],
  );
});

Deno.test("curves: averaged over seeds, per method", async () => {
  const out = await Deno.makeTempDir();
  const c = await writeComparison(out);
  // fedavg: every seed starts at 100 and ends at its mean over clients (50, 54, 52).
  assertEquals(c.methods[0].curve, [{ round: 0, ppl: 100 }, { round: 1, ppl: 76 }, {
    round: 2,
    ppl: 52,
  }]);
  await Deno.remove(out, { recursive: true });
});

/** Checks that `xml` is well-formed enough: tags balance and nest; returns the element names. */
function parseXmlTags(xml: string): string[] {
  const names: string[] = [];
  const open: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
  let end = 0;
  for (const m of xml.matchAll(tag)) {
    const between = xml.slice(end, m.index);
    assert(!/[<>]/.test(between), `stray markup before ${m[0]}: ${between}`);
    assert(!/&(?!(amp|lt|gt|quot|apos);)/.test(between), `bad entity in ${between}`);
    end = m.index! + m[0].length;
    const [, closing, name, , selfClosing] = m;
    if (closing) assertEquals(open.pop(), name, `</${name}> closes the wrong element`);
    else {
      names.push(name);
      if (!selfClosing) open.push(name);
    }
  }
  assert(!/[<>]/.test(xml.slice(end)), "markup after the last tag");
  assertEquals(open, [], "unclosed elements");
  return names;
}

Deno.test("svg: well-formed, one polyline per method, dashed pretrained, log axis, same bytes", async () => {
  const out = await Deno.makeTempDir();
  const c = await writeComparison(out);
  const svg = perplexitySvg(c);
  const names = parseXmlTags(svg);
  assertEquals(names[0], "svg");
  assertEquals(names.filter((n) => n === "svg").length, 1);
  assertEquals(names.filter((n) => n === "polyline").length, c.methods.length);
  assertEquals(names.filter((n) => n === "path").length, 0);
  assert(svg.includes('width="800" height="500"'));
  assertEquals(svg.match(/stroke-dasharray/g)?.length, 2, "the pretrained line and its legend");
  for (const label of ["pretrained", "fedavg", "local", "communication round"]) {
    assert(svg.includes(`>${label}<`), label);
  }
  // The curves span 52..400, more than 3×: a log axis.
  assert(svg.includes("test perplexity (log scale)"));
  assert(!/https?:\/\/(?!www\.w3\.org\/2000\/svg)/.test(svg), "no external resources");
  assert(!svg.includes("NaN") && !svg.includes("Infinity"));
  assertEquals(perplexitySvg(await writeComparison(out)), svg);
  await Deno.remove(out, { recursive: true });
});

Deno.test("svg: a narrow range gets a linear axis; names are escaped", async () => {
  const out = await Deno.makeTempDir();
  await writeRun(out, "pretrained", 0, [60, 60]);
  await writeRun(out, "fedavg", 0, [50, 52], { start: 60 });
  const c = aggregate(
    await readRuns(expectedRuns(out, "topics", ["fedavg"], 1), { scenario: "topics", ood: false }),
  );
  c.methods[0].method = "a<b & c";
  const svg = perplexitySvg(c);
  parseXmlTags(svg);
  assert(svg.includes("a&lt;b &amp; c"));
  assert(svg.includes(">test perplexity<"), "linear axis label");
  await Deno.remove(out, { recursive: true });
});

Deno.test("log ticks: 1-2-5 steps, thinned or filled to stay readable", () => {
  assertEquals(logTicks(15, 220), [20, 50, 100, 200]);
  // 1-2-5 gives only 50 and 100: every 1..9 × 10^k instead.
  assertEquals(logTicks(30, 110), [30, 40, 50, 60, 70, 80, 90, 100]);
  // 1-2-5 gives 19: decades only.
  assertEquals(logTicks(1, 1e6), [1, 10, 100, 1000, 10000, 100000, 1000000]);
});

Deno.test("log axis ends: the nearest m × 10^k outside the data", () => {
  assertEquals([roundLog(38.2, "down"), roundLog(194, "up")], [30, 200]);
  assertEquals([roundLog(0.047, "down"), roundLog(1000, "up")], [0.04, 1000]);
});
