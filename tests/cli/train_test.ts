// `deno task train`'s command line: defaults are method.md §6's, every flag's bad value is a
// UsageError naming what is allowed, --experts is tied to comigs-1gxs, and --resume stands alone.
// One real process checks that a bad flag ends in one message and exit code 2.
import { parseInvocation } from "../../cli/train.ts";
import { TRAIN_DEFAULTS as DEFAULTS } from "../../fed/options.ts";
import { UsageError } from "../../cli/args.ts";
import { assert, assertEquals, assertSameFile, assertThrows } from "../assert.ts";

const NOW = new Date(2026, 10, 25, 8, 30, 5);

function options(args: string[]) {
  const invocation = parseInvocation(args, NOW);
  assert("options" in invocation);
  return invocation.options;
}

Deno.test("train: no flags give CoMiGS-1G1S on topics with the shipped defaults", () => {
  const o = options([]);
  assertEquals(o.method, "comigs-1g1s");
  assertEquals(o.scenario, "topics");
  assertEquals(o.clients, 4);
  assertEquals(o.experts, [2, 2, 2, 2]);
  assertEquals(o.trainTokens, [null, null, null, null]);
  assertEquals(o.model, "models/base");
  assertEquals([o.rounds, o.localSteps, o.batch, o.seq, o.evalEvery], [10, 10, 8, 128, 1]);
  assertEquals([o.routerEvery, o.routerSteps, o.lr], [10, 2, 2e-3]);
  assertEquals([o.rank, o.alpha, o.scaling, o.topK], [8, 16, "rslora", 2]);
  assertEquals([o.lbCoef, o.lbRho, o.aggregation], [0.01, 0.5, "uniform"]);
  assertEquals([o.ood, o.routerOnTrain, o.loraTargets], [false, false, null]);
  assertEquals(o.out, "runs/comigs-1g1s-topics-s0-20261125-083005");
  assertEquals(o.seed, DEFAULTS.seed);
});

Deno.test("train: the paper's settings are reachable by flags", () => {
  const o = options([
    "--rounds",
    "20",
    "--local-steps",
    "10",
    "--router-every",
    "30",
    "--router-steps",
    "10",
    "--batch",
    "64",
    "--seq",
    "128",
    "--lr",
    "2e-3",
    "--ood",
    "--router-on-train",
    "--method",
    "comigs-1gxs",
    "--experts",
    "1,1,8,8",
    "--scenario",
    "domains",
    "--seed",
    "3",
    "--lora-scaling",
    "standard",
    "--top-k",
    "1",
    "--lb-coef",
    "0",
    "--lb-rho",
    "0.3",
    "--aggregation",
    "tokens",
    "--train-tokens",
    "5000,all,all,all",
    "--eval-every",
    "5",
    "--out",
    "x",
  ]);
  assertEquals([o.trainTokens, o.evalEvery], [[5000, null, null, null], 5]);
  assertEquals([o.rounds, o.routerEvery, o.routerSteps, o.batch], [20, 30, 10, 64]);
  assertEquals(o.experts, [1, 1, 8, 8]);
  assertEquals([o.ood, o.routerOnTrain, o.scaling, o.topK, o.lbCoef], [
    true,
    true,
    "standard",
    1,
    0,
  ]);
  assertEquals([o.aggregation, o.out, o.seed], ["tokens", "x", 3]);
  assertEquals(options(["--lora-targets", "v, q"]).loraTargets, ["q_proj", "v_proj"]);
  assertEquals(options(["--lora-targets=o,k_proj"]).loraTargets, ["k_proj", "o_proj"]);
  assertEquals(options(["--method", "comigs-1gxs"]).experts, [2, 2, 4, 4]);
  assertEquals(options(["--scenario", "iid", "--clients", "12"]).clients, 12);
});

Deno.test("train: bad flags and values are clear errors listing what is allowed", () => {
  const cases: [string[], string][] = [
    [["--method", "fedprox"], "is not one of: comigs-1g1s, comigs-2g"],
    [["--scenario", "news"], "is not one of: topics, languages, domains, iid"],
    [["--clients", "5"], "--clients must be an integer in 1..4"],
    [["--scenario", "iid", "--clients", "17"], "1..16"],
    [["--clients", "0"], "1..4"],
    [["--experts", "2,4,2,2"], "holds 2 experts per client; for other or per-client counts use"],
    [["--method", "fedavg", "--experts", "3"], "--experts [3]: --method fedavg holds 2 experts"],
    [["--method", "comigs-1gxs", "--experts", "2,2"], "lists 2 counts for 4 clients"],
    [["--method", "comigs-1gxs", "--experts", "2,x,2,2"], "each entry must be an integer"],
    [["--method", "comigs-1gxs", "--experts", "2,17,2,2"], "integer in 1..16"],
    [["--train-tokens", "1"], 'integer ≥ 2 or "all"'],
    [["--train-tokens", "5000,none,all,all"], 'integer ≥ 2 or "all"'],
    [["--train-tokens", "5000,all"], "lists 2 entries for 4 clients"],
    [["--rounds", "0"], "--rounds must be an integer"],
    [["--eval-every", "0"], "--eval-every must be an integer in 1..100000"],
    [["--local-steps", "1.5"], "--local-steps must be an integer"],
    [["--router-every=-1"], "--router-every must be an integer"],
    [["--router-steps", "x"], "--router-steps must be an integer"],
    [["--lr", "0"], "--lr must be a number in (0, 10)"],
    [["--lr", "abc"], "--lr must be a number"],
    [["--lr", "-1"], "--lr must be a number in (0, 10), got -1"],
    [["--seed", "-3"], "--seed must be an integer in 0..4294967295, got -3"],
    [["--batch", "0"], "--batch must be an integer"],
    [["--seq", ""], "--seq must be an integer"],
    [["--seed=-3"], "--seed must be an integer"],
    [["--rank", "0"], "--rank must be an integer"],
    [["--alpha=-1"], "--alpha must be a number > 0"],
    [["--lora-scaling", "dora"], "rslora, standard"],
    [["--top-k", "0"], "--top-k must be an integer in 1..16"],
    [["--lb-coef=-0.1"], "--lb-coef must be a number ≥ 0"],
    [["--lb-rho", "1"], "--lb-rho must be a number in (0, 1)"],
    [["--lora-targets", ""], "--lora-targets names no projection: give a non-empty subset of q"],
    [["--lora-targets", "q,,v"], '--lora-targets "" is not an attention projection'],
    [["--lora-targets", "q,up"], '--lora-targets "up" is not an attention projection'],
    [["--lora-targets", "q,v,q"], "--lora-targets names q_proj twice"],
    [["--aggregation", "krum"], "uniform, tokens, median, trimmed-mean"],
    [["--trim", "0.5"], "--trim must be a number in [0, 0.5)"],
    [["--min-clients", "5"], "--min-clients must be an integer in 1..4"],
    [["--clients-per-round", "0"], "--clients-per-round must be an integer in 1..4"],
    [["--max-update-norm", "0"], "--max-update-norm must be a number > 0"],
    [["--dp", "strong"], "none, central, local"],
    [["--dp", "central", "--aggregation", "median"], "cannot be used with --dp central"],
    [["--dp", "local", "--method", "comigs-2s"], "--method comigs-2s has none"],
    [["--dp", "central", "--dp-noise", "0"], "--dp-noise must be a number > 0"],
    [["--dp", "central", "--dp-delta", "1"], "--dp-delta must be a number in (0, 1)"],
    [["--method", "pcl", "--aggregation", "tokens"], "method pcl has none"],
    [["--bogus"], "Unknown option '--bogus'"],
    [["--resume", "runs/x", "--rounds", "3"], "remove --rounds"],
  ];
  for (const [args, message] of cases) {
    assertThrows(() => parseInvocation(args, NOW), UsageError, message);
  }
  assertEquals(parseInvocation(["--resume", "runs/x"]), { resume: "runs/x" });
});

Deno.test("train: a bad flag ends the process with one message and exit code 2", async () => {
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../../cli/train.ts", import.meta.url).pathname, "--clients", "9"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(stderr);
  assertEquals(code, 2);
  assert(text.includes("--clients must be an integer in 1..4"), text);
  assert(!text.includes("    at "), text);
});

Deno.test("train: --lora-targets on a GPT-2 base is one message before any file", async () => {
  const dir = await Deno.makeTempDir();
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../../cli/train.ts", import.meta.url).pathname,
      "--lora-targets",
      "q,v",
      "--out",
      `${dir}/run`,
    ],
    stdout: "piped",
    stderr: "piped",
    // It answers at once; a version that did not refuse would go on to load the data and train.
    signal: AbortSignal.timeout(60_000),
  }).output();
  const text = new TextDecoder().decode(stderr);
  assertEquals(code, 2);
  assert(
    text.includes(
      "--lora-targets chooses among the attention projections of a Llama-family " +
        "base (q, k, v, o); the base model (--model models/base) is GPT-2",
    ),
    text,
  );
  assert(text.includes("leave --lora-targets out"), text);
  assert(!text.includes("    at "), text);
  assertEquals([...Deno.readDirSync(dir)], []);
  await Deno.remove(dir);
});

Deno.test("train: --resume of a folder without a run is a clear error", async () => {
  const dir = await Deno.makeTempDir();
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../../cli/train.ts", import.meta.url).pathname, "--resume", dir],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(stderr);
  assertEquals(code, 2);
  assert(text.includes(`--resume ${dir} holds no run: ${dir}/config.json: cannot read`), text);
  assert(!text.includes("    at "), text);
  await Deno.remove(dir);
});

// Killing the process (SIGKILL, mid-round, after its first saved round) and resuming must end
// exactly where an uninterrupted run ends. One client of the real topics data, small batches.
Deno.test({
  name: "train: a run killed mid-training and resumed ends bit-identical to an uninterrupted one",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const train = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../../cli/train.ts", import.meta.url).pathname, ...args],
        stdout: "piped",
        stderr: "piped",
      });
    const flags = (out: string) => [
      "--clients",
      "1",
      "--rounds",
      "3",
      "--local-steps",
      "2",
      "--batch",
      "2",
      "--router-every",
      "1",
      "--router-steps",
      "1",
      "--seed",
      "4",
      "--out",
      out,
    ];
    const whole = await train(flags(`${dir}/whole`)).output();
    assertEquals(whole.code, 0, new TextDecoder().decode(whole.stderr));

    const child = train(flags(`${dir}/killed`)).spawn();
    const state = `${dir}/killed/resume.safetensors`;
    for (;;) {
      const saved = await Deno.stat(state).then(() => true, () => false);
      if (saved) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill("SIGKILL");
    const killed = await child.output();
    assert(killed.code !== 0, "the run finished before it was killed");
    await Deno.stat(`${dir}/killed/summary.json`).then(
      () => assert(false, "summary.json exists after the kill"),
      () => {},
    );
    const resumed = await train(["--resume", `${dir}/killed`]).output();
    assertEquals(resumed.code, 0, new TextDecoder().decode(resumed.stderr));
    for (const file of ["clients/0/adapters.safetensors", "summary.json"]) {
      await assertSameFile(`${dir}/whole/${file}`, `${dir}/killed/${file}`);
    }
    await Deno.remove(dir, { recursive: true });
  },
});
