// `deno task compare --scenario S --seeds 3`: trains every method of a comparison with every
// seed (pretrained once: it is deterministic and trains nothing; on iid once per seed, as the
// seed deals the documents it is tested on), then reports mean ± std test perplexity over seeds
// (DIR/results.md, printed too) and the perplexity curves (DIR/ppl.svg).
//
// Each run is `deno run -A cli/train.ts ... --out DIR/<method>-s<seed>` in a child process, one
// after another with its output streamed through, or with `--jobs N` up to N at once, each
// writing its output to DIR/<method>-s<seed>.log: one run leaves part of the cores idle (its
// submits wait, its host code runs between them), so two at once finish a comparison sooner on
// a CPU adapter, with the same bits (each run is its own process). A run whose summary.json
// exists is finished and skipped; one with only config.json was interrupted and continues with
// `--resume`. So compare can be killed at any moment and rerun with the same command.
// DIR/compare.json records the scenario and the training options, so a rerun cannot mix runs
// trained with other settings.
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
import { fileExists } from "../model/file_exists.ts";
import { type Scenario, SCENARIOS } from "../fed/scenarios.ts";
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
  "[--jobs N] [training options]";
const FLAGS: FlagSpec = {
  scenario: { type: "string", help: `one of ${SCENARIOS.join(", ")} (required)` },
  seeds: { type: "string", help: "seeds 0..N-1 per method, N in 1..100 (default 3)" },
  methods: {
    type: "string",
    help: `comma-separated, from ${METHODS.join(", ")} (default ${MAIN_METHODS.join(",")}); ` +
      `${PRETRAINED} always runs as the reference (once; on iid once per seed)`,
  },
  ood: { type: "boolean", help: "out-of-distribution validation and test sets" },
  out: { type: "string", help: "folder of the runs and the report (default runs/compare-S[-ood])" },
  jobs: {
    type: "string",
    help: "runs trained at once, 1..16 (default 1); above 1 each run's output goes to " +
      "DIR/<method>-s<seed>.log",
  },
  ...Object.fromEntries(
    PASS_THROUGH.map((name) => [name, {
      ...TRAIN_FLAGS[name],
      help: `${TRAIN_FLAGS[name].help}, forwarded to every run`,
    }]),
  ),
  help: { type: "boolean", help: "show this help" },
};

export interface CompareOptions {
  scenario: Scenario;
  seeds: number;
  methods: string[];
  ood: boolean;
  out: string;
  /** Runs trained at once (not recorded: it changes no result). */
  jobs: number;
  /** The forwarded training flags, as `--name value` pairs (`--name` for a switch) in
   * PASS_THROUGH's order. */
  training: string[];
}

export function parseInvocation(args: string[]): { help: true } | { options: CompareOptions } {
  const flags = parseFlags(args, FLAGS, USAGE);
  if (flags.help) return { help: true };
  const scenario = flags.scenario as Scenario | undefined; // checked next
  if (!scenario || !SCENARIOS.includes(scenario)) {
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
  let jobs = 1;
  if (flags.jobs !== undefined) {
    jobs = Number(flags.jobs);
    if (!/^\d+$/.test(flags.jobs as string) || jobs < 1 || jobs > 16) {
      throw new UsageError(`--jobs must be an integer in 1..16, got "${flags.jobs}"`);
    }
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
  return { options: { scenario, seeds, methods, ood, out, jobs, training } };
}

export type RunState = "finished" | "interrupted" | "new";

/** finished: summary.json exists; interrupted: config.json without summary; new: neither. */
export async function runState(dir: string): Promise<RunState> {
  if (await fileExists(join(dir, "summary.json"))) return "finished";
  if (await fileExists(join(dir, "config.json"))) return "interrupted";
  return "new";
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

/** The file a run's output goes to when runs train at once: beside its folder. */
function runLog(run: RunRef): string {
  return `${run.dir}.log`;
}

/**
 * The children training now. SIGINT/SIGTERM sent to compare are passed on to each, so a killed
 * compare never leaves a trainer writing into a run directory that the next compare would
 * start again; compare then exits once they have.
 */
class Trainers {
  readonly #children = new Set<Deno.ChildProcess>();
  #stoppedBy: Deno.Signal | undefined;
  readonly #listeners = (["SIGINT", "SIGTERM"] as const).map((signal) =>
    [signal, () => {
      this.#stoppedBy = signal;
      for (const child of this.#children) {
        try {
          child.kill(signal);
        } catch { /* already exited */ }
      }
    }] as const
  );

  constructor() {
    for (const [signal, listener] of this.#listeners) Deno.addSignalListener(signal, listener);
  }

  /** Whether a signal has stopped the runs (no new one starts then). */
  get stopped(): boolean {
    return this.#stoppedBy !== undefined;
  }

  /** Runs train.ts with `args`: output streamed through, or appended to `log`. */
  async train(args: string[], label: string, log?: string): Promise<void> {
    const output = log ? "piped" : "inherit";
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", TRAIN_CLI, ...args],
      stdin: "null",
      stdout: output,
      stderr: output,
    }).spawn();
    this.#children.add(child);
    const copied = log
      ? Promise.all([child.stdout, child.stderr].map((stream) => appendTo(log, stream)))
      : Promise.resolve();
    const [status] = await Promise.all([child.status, copied]);
    this.#children.delete(child);
    if (this.#stoppedBy) return;
    if (!status.success) {
      throw new Error(
        `training run ${label} failed with exit code ${status.code}` +
          (status.signal ? ` (signal ${status.signal})` : "") +
          (log ? `; its output: ${log}\n${await lastLines(log, 20)}` : ""),
      );
    }
  }

  /** Ends compare (exit code 130 or 143) when a signal stopped the runs; else stops listening. */
  close(): void {
    for (const [signal, listener] of this.#listeners) Deno.removeSignalListener(signal, listener);
    if (this.#stoppedBy) {
      console.error(`compare: stopped by ${this.#stoppedBy}; rerun the same command to continue`);
      Deno.exit(this.#stoppedBy === "SIGINT" ? 130 : 143);
    }
  }
}

/**
 * Appends what `stream` yields to file `path` chunk by chunk as it comes, so the log shows a
 * run's progress live (piping into the file's `writable` held it all until the run ended).
 */
async function appendTo(path: string, stream: ReadableStream<Uint8Array>): Promise<void> {
  const file = await Deno.open(path, { append: true, create: true });
  try {
    for await (const chunk of stream) {
      for (let written = 0; written < chunk.length;) {
        written += await file.write(chunk.subarray(written));
      }
    }
  } finally {
    file.close();
  }
}

/** The last `count` lines of text file `path`, indented. */
async function lastLines(path: string, count: number): Promise<string> {
  const lines = (await Deno.readTextFile(path)).trimEnd().split("\n");
  return lines.slice(-count).map((line) => `  ${line}`).join("\n");
}

/** What DIR/compare.json holds: the settings every run in DIR must share. */
function recordedSettings(options: CompareOptions) {
  return { scenario: options.scenario, ood: options.ood, training: options.training };
}

/** Writes DIR/compare.json on the first call; later calls must ask for the same settings. */
async function checkSettings(options: CompareOptions): Promise<void> {
  const path = join(options.out, "compare.json");
  const wanted = JSON.stringify(recordedSettings(options), null, 2) + "\n";
  if (await fileExists(path)) {
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
  const runs = expectedRuns(options.out, options.scenario, options.methods, options.seeds);
  const states = await Promise.all(runs.map((run) => runState(run.dir)));
  const todo = runs.flatMap((run, i) => {
    const counter = `[${i + 1}/${runs.length}]`;
    const label = `${run.dir} (${run.method}, seed ${run.seed})`;
    if (states[i] !== "finished") return [{ run, state: states[i], counter, label }];
    console.error(`compare: ${counter} ${label}: finished, skipped`);
    return [];
  });
  // The time left: the runs still to train at the mean time of those trained so far (pretrained
  // is only evaluated, so it is left out of the mean), `jobs` at a time.
  let trained = 0, trainedSeconds = 0, next = 0, failure: Error | undefined;
  const trainers = new Trainers();
  const worker = async () => {
    while (next < todo.length && !failure && !trainers.stopped) {
      const { run, state, counter, label } = todo[next++];
      const left = todo.length - next + 1;
      const eta = trained
        ? `; all ${left} left: ETA ${
          formatDuration(Math.ceil(left / options.jobs) * trainedSeconds / trained)
        }`
        : "";
      const log = options.jobs > 1 ? runLog(run) : undefined;
      const doing = `${state === "new" ? "training" : "resuming"}${log ? ` (output: ${log})` : ""}`;
      console.error(`compare: ${counter} ${label}: ${doing}${eta}`);
      const started = performance.now();
      try {
        await trainers.train(trainArgs(options, run, state), label, log);
      } catch (e) {
        failure ??= e as Error;
        return;
      }
      const seconds = (performance.now() - started) / 1000;
      // A signal kills the runs training then: they have not finished (the next compare resumes
      // them), unless one had written its summary before the signal came.
      const finished = !trainers.stopped || await runState(run.dir) === "finished";
      const ended = finished ? "done" : "stopped";
      if (log) {
        console.error(`compare: ${counter} ${label}: ${ended} in ${formatDuration(seconds)}`);
      }
      if (!finished) return;
      if (run.method !== PRETRAINED) {
        trained++;
        trainedSeconds += seconds;
      }
    }
  };
  // A failed run stops new ones; those already training finish (their work is kept).
  await Promise.all(Array.from({ length: options.jobs }, worker));
  trainers.close();
  if (failure) throw failure;
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
