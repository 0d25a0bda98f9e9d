// `deno task compare --scenario S --seeds 3`: trains every method of a comparison with every
// seed (pretrained once: it is deterministic and does not depend on the seed), then reports
// mean ± std test perplexity over seeds (DIR/results.md, printed too) and the perplexity curves
// (DIR/ppl.svg).
//
// Each run is `deno run -A cli/train.ts ... --out DIR/<method>-s<seed>` in a child process, one
// after another, its output streamed through. A run whose summary.json exists is finished and
// skipped; one with only config.json was interrupted and continues with `--resume`. So compare
// can be killed at any moment and rerun with the same command. DIR/compare.json records the
// scenario and the training options, so a rerun cannot mix runs trained with other settings.
import { join } from "node:path";
import {
  aggregate,
  expectedRuns,
  perplexitySvg,
  PRETRAINED,
  readRuns,
  resultsMarkdown,
  type RunRef,
} from "../fed/report.ts";
import { METHODS } from "../fed/methods.ts";
import { SCENARIOS } from "../fed/scenarios.ts";
import { type FlagSpec, helpText, parseFlags, runMain, UsageError } from "./args.ts";
import { formatDuration } from "./progress.ts";
import { TRAIN_FLAGS, trainOptionsFromFlags } from "./train_flags.ts";

export const MAIN_METHODS = [
  "comigs-1g1s",
  "comigs-2g",
  "comigs-2s",
  "pfedmoe",
  "fedavg",
  "pcl",
  "local",
  "centralized",
];

/** Training flags forwarded to every run when given (train's own checks apply to them). */
const PASS_THROUGH = [
  "rounds",
  "local-steps",
  "eval-every",
  "batch",
  "seq",
  "lr",
  "model",
  "router-every",
  "router-steps",
  "router-on-train",
  "train-tokens",
  "rank",
  "alpha",
  "lora-scaling",
  "top-k",
  "lb-coef",
  "lb-rho",
  "lora-targets",
  "aggregation",
];

const USAGE = "deno task compare --scenario S [--seeds N] [--methods a,b,c] [--ood] [--out DIR] " +
  "[training options]";
const FLAGS: FlagSpec = {
  scenario: { type: "string", help: `one of ${SCENARIOS.join(", ")} (required)` },
  seeds: { type: "string", help: "seeds 0..N-1 per method, N in 1..100 (default 3)" },
  methods: {
    type: "string",
    help: `comma-separated, from ${METHODS.join(", ")} (default ${MAIN_METHODS.join(",")}); ` +
      `${PRETRAINED} always runs once as the reference`,
  },
  ood: { type: "boolean", help: "out-of-distribution validation and test sets" },
  out: { type: "string", help: "folder of the runs and the report (default runs/compare-S[-ood])" },
  ...Object.fromEntries(
    PASS_THROUGH.map((name) => [name, {
      ...TRAIN_FLAGS[name],
      help: `${TRAIN_FLAGS[name].help}, forwarded to every run`,
    }]),
  ),
  help: { type: "boolean", help: "show this help" },
};

export interface CompareOptions {
  scenario: string;
  seeds: number;
  methods: string[];
  ood: boolean;
  out: string;
  /** The forwarded training flags, as `--name value` pairs (`--name` for a switch) in
   * PASS_THROUGH's order. */
  training: string[];
}

export function parseInvocation(args: string[]): { help: true } | { options: CompareOptions } {
  const flags = parseFlags(args, FLAGS, USAGE);
  if (flags.help) return { help: true };
  const scenario = flags.scenario as string | undefined;
  if (!scenario || !(SCENARIOS as readonly string[]).includes(scenario)) {
    throw new UsageError(
      `--scenario must be one of ${SCENARIOS.join(", ")}, got ${
        scenario === undefined ? "nothing" : `"${scenario}"`
      }`,
    );
  }
  let seeds = 3;
  if (flags.seeds !== undefined) {
    seeds = Number(flags.seeds);
    if (!/^\d+$/.test(flags.seeds as string) || seeds < 1 || seeds > 100) {
      throw new UsageError(`--seeds must be an integer in 1..100, got "${flags.seeds}"`);
    }
  }
  const methods = flags.methods === undefined
    ? [...MAIN_METHODS]
    : [...new Set((flags.methods as string).split(",").map((m) => m.trim()))];
  const unknown = methods.filter((m) => !(METHODS as readonly string[]).includes(m));
  if (unknown.length) {
    throw new UsageError(
      `--methods: unknown ${unknown.map((m) => `"${m}"`).join(", ")}; allowed: ${
        METHODS.join(", ")
      }`,
    );
  }
  const ood = flags.ood === true;
  const training: string[] = [];
  for (const name of PASS_THROUGH) {
    const value = flags[name] as string | boolean | undefined;
    if (value === true) training.push(`--${name}`);
    else if (typeof value === "string") training.push(`--${name}`, value);
  }
  // The runs' options as train will check them (the default method and client count).
  trainOptionsFromFlags({
    scenario,
    ood,
    ...Object.fromEntries(PASS_THROUGH.map((n) => [n, flags[n]])),
  });
  const out = (flags.out as string | undefined) ?? `runs/compare-${scenario}${ood ? "-ood" : ""}`;
  return { options: { scenario, seeds, methods, ood, out, training } };
}

export type RunState = "finished" | "interrupted" | "new";

/** finished: summary.json exists; interrupted: config.json without summary; new: neither. */
export async function runState(dir: string): Promise<RunState> {
  if (await exists(join(dir, "summary.json"))) return "finished";
  if (await exists(join(dir, "config.json"))) return "interrupted";
  return "new";
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** The train.ts arguments for a run: a new one with every option, or `--resume` alone. */
export function trainArgs(options: CompareOptions, run: RunRef, state: RunState): string[] {
  if (state === "interrupted") return ["--resume", run.dir];
  return [
    "--method",
    run.method,
    "--scenario",
    options.scenario,
    "--seed",
    String(run.seed),
    "--out",
    run.dir,
    ...options.ood ? ["--ood"] : [],
    ...options.training,
  ];
}

const TRAIN_CLI = new URL("./train.ts", import.meta.url).pathname;

/**
 * Runs train.ts in a child with its output streamed through. SIGINT/SIGTERM sent to compare
 * are passed on, so a killed compare never leaves a trainer writing into a run directory
 * that the next compare would start again.
 */
async function train(args: string[], label: string): Promise<void> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TRAIN_CLI, ...args],
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  let forwarded: Deno.Signal | undefined;
  const forward = signals.map((signal) => () => {
    forwarded = signal;
    try {
      child.kill(signal);
    } catch { /* already exited */ }
  });
  signals.forEach((signal, i) => Deno.addSignalListener(signal, forward[i]));
  const status = await child.status;
  signals.forEach((signal, i) => Deno.removeSignalListener(signal, forward[i]));
  if (forwarded) {
    console.error(`compare: stopped by ${forwarded}; rerun the same command to continue`);
    Deno.exit(forwarded === "SIGINT" ? 130 : 143);
  }
  if (!status.success) {
    throw new Error(
      `training run ${label} failed with exit code ${status.code}` +
        (status.signal ? ` (signal ${status.signal})` : ""),
    );
  }
}

/** What DIR/compare.json holds: the settings every run in DIR must share. */
function recordedSettings(options: CompareOptions) {
  return { scenario: options.scenario, ood: options.ood, training: options.training };
}

/** Writes DIR/compare.json on the first call; later calls must ask for the same settings. */
async function checkSettings(options: CompareOptions): Promise<void> {
  const path = join(options.out, "compare.json");
  const wanted = JSON.stringify(recordedSettings(options), null, 2) + "\n";
  if (await exists(path)) {
    const recorded = await Deno.readTextFile(path);
    if (recorded !== wanted) {
      const r = JSON.parse(recorded);
      const flags = ["--scenario", r.scenario, ...r.ood ? ["--ood"] : [], ...r.training];
      throw new UsageError(
        `${options.out} holds runs made with ${flags.join(" ")}; ` +
          "rerun with those options or choose another --out",
      );
    }
    return;
  }
  await Deno.mkdir(options.out, { recursive: true });
  await Deno.writeTextFile(path, wanted);
}

async function main(): Promise<void> {
  const invocation = parseInvocation(Deno.args);
  if ("help" in invocation) return console.log(helpText(FLAGS, USAGE));
  const { options } = invocation;
  await checkSettings(options);
  const runs = expectedRuns(options.out, options.methods, options.seeds);
  const states = await Promise.all(runs.map((run) => runState(run.dir)));
  // The time left: the runs still to train at the mean time of those trained so far (the first
  // run, pretrained, is only evaluated, so it is left out of the mean).
  let trained = 0, trainedSeconds = 0;
  for (const [i, run] of runs.entries()) {
    const label = `${run.dir} (${run.method}, seed ${run.seed})`;
    const counter = `[${i + 1}/${runs.length}]`;
    if (states[i] === "finished") {
      console.error(`compare: ${counter} ${label}: finished, skipped`);
      continue;
    }
    const left = states.slice(i).filter((state) => state !== "finished").length;
    const eta = trained
      ? `; all ${left} left: ETA ${formatDuration(left * trainedSeconds / trained)}`
      : "";
    const doing = states[i] === "new" ? "training" : "resuming";
    console.error(`compare: ${counter} ${label}: ${doing}${eta}`);
    const started = performance.now();
    await train(trainArgs(options, run, states[i]), label);
    if (run.method !== PRETRAINED) {
      trained++;
      trainedSeconds += (performance.now() - started) / 1000;
    }
  }
  const comparison = aggregate(
    await readRuns(runs, { scenario: options.scenario, ood: options.ood }),
  );
  const markdown = resultsMarkdown(comparison);
  await Deno.writeTextFile(join(options.out, "results.md"), markdown);
  await Deno.writeTextFile(join(options.out, "ppl.svg"), perplexitySvg(comparison));
  console.log(`\n${markdown}`);
  console.log(
    `report in ${join(options.out, "results.md")}, plot in ${join(options.out, "ppl.svg")}`,
  );
}

if (import.meta.main) await runMain(main, FLAGS);
