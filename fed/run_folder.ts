// A run's folder (interfaces.md "Training runs"): config.json (its options), metrics.jsonl,
// summary.json, clients/<id>/adapters.safetensors, global.safetensors, plus resume.safetensors
// (the state). After each round the whole state goes into one file written atomically, so a run
// killed at any moment resumes from its last completed round and ends exactly as an
// uninterrupted one. Every file is written atomically.
import { OptionError } from "../model/option_error.ts";
import type { NamedTensor } from "../model/safetensors.ts";
import { readSafetensors, writeFileAtomic, writeSafetensors } from "../model/safetensors.ts";
import type { ClientState } from "./client.ts";
import { type StateCounters, stateFromTensors, stateTensors } from "./client_state.ts";
import { METHODS } from "./methods.ts";
import { type TrainOptions, withCurrentDefaults } from "./options.ts";
import {
  type Measurement,
  parseMetrics,
  type RunEvent,
  type RunRecord,
  type Summary,
} from "./records.ts";
import type { Checkpoint } from "./simulation.ts";
import type { StrategyState } from "./strategy.ts";

const CONFIG_FILE = "config.json";
const RESUME_FILE = "resume.safetensors";
const METRICS_FILE = "metrics.jsonl";

/** What resume.safetensors' metadata holds besides the tensors. */
interface SavedRun {
  options: TrainOptions;
  round: number;
  elapsedS: number;
  pretrainedPpl: number[];
  clients: StateCounters[];
  /** The server's state beyond its parameters (absent in runs from before it had any). */
  server?: StrategyState;
}

/**
 * The options in a run folder's config.json, with the fields every reader relies on checked
 * (written by this version or an older one: fields added since may be absent).
 */
export async function readRunConfig(dir: string): Promise<TrainOptions> {
  const path = `${dir}/${CONFIG_FILE}`;
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new Error(`${path}: cannot read a run's config (${(e as Error).message})`);
  }
  if (typeof json !== "object" || json === null) {
    throw new Error(`${path}: not a training run's config (not a JSON object)`);
  }
  const bad = [
    ...["method", "scenario", "model"].filter((key) => typeof json[key] !== "string"),
    ...["clients", "batch", "seq", "seed"].filter((key) => !Number.isInteger(json[key])),
    ...(typeof json.ood === "boolean" ? [] : ["ood"]),
  ];
  if (bad.length) {
    throw new Error(`${path}: not a training run's config (bad or missing: ${bad.join(", ")})`);
  }
  if (!(METHODS as readonly string[]).includes(json.method as string)) {
    throw new Error(`${path}: unknown method "${json.method}"`);
  }
  return withCurrentDefaults(json as unknown as TrainOptions);
}

/** Writes the run's config.json. */
export async function writeRunConfig(options: TrainOptions): Promise<void> {
  await writeJson(`${options.out}/${CONFIG_FILE}`, options);
}

/** A run to start or continue: its options and the state it continues from, read and checked. */
export interface RunPlan {
  options: TrainOptions;
  saved?: Awaited<ReturnType<typeof readRunState>>;
  /** Whether a run already in the folder is replaced (its run files removed). */
  overwrite: boolean;
}

/** A run folder opened to run in: the plan, and its writers. */
export interface OpenRun extends RunPlan {
  /** Every line of metrics.jsonl so far (a resumed run's up to its last completed round). */
  records: RunRecord[];
  record(m: Measurement): Promise<void>;
  event(e: RunEvent): Promise<void>;
  save(checkpoint: Checkpoint): Promise<void>;
}

/** A served run's clients' credential hashes (fed/http_server.ts), by client id. */
const CREDENTIALS_FILE = "credentials.json";

/** The files a run writes into its folder (what `overwrite` removes). */
const RUN_FILES = [
  CREDENTIALS_FILE,
  CONFIG_FILE,
  METRICS_FILE,
  RESUME_FILE,
  "summary.json",
  "global.safetensors",
  "clients",
];

/**
 * Reads and checks a run to start (`options`: its folder must be new, an empty folder, or, with
 * `overwrite`, a run's folder) or to continue (`resume`: the folder's state). Creates nothing.
 */
export async function planRun(
  start: { options: TrainOptions } | { resume: string },
  { overwrite = false } = {},
): Promise<RunPlan> {
  if ("options" in start) {
    await checkNewRunFolder(start.options.out, overwrite);
    return { options: start.options, overwrite };
  }
  const saved = await readRunState(start.resume);
  const options = saved?.run.options ??
    // Killed before its first round ended: start over with the run's own options.
    await readRunConfig(start.resume).catch((e: Error) => {
      throw new OptionError("resume", `${start.resume} holds no run: ${e.message}`);
    });
  return { options, saved, overwrite: false };
}

/** Whether `out` can hold a new run; OptionError("out") says why not. */
async function checkNewRunFolder(out: string, overwrite: boolean): Promise<void> {
  const info = await Deno.stat(out).catch(() => null);
  if (!info) return;
  if (!info.isDirectory) {
    throw new OptionError("out", `${out} is a file; name a folder for the run`);
  }
  const entries: string[] = [];
  for await (const entry of Deno.readDir(out)) entries.push(entry.name);
  if (entries.length === 0) return;
  if (!entries.includes(CONFIG_FILE)) {
    throw new OptionError(
      "out",
      `${out} is not empty and holds no run; name a new or empty folder`,
    );
  }
  if (!overwrite) {
    throw new OptionError(
      "out",
      `${out} holds a run already: continue it with {resume} ${out}, start it again with ` +
        `{overwrite}, or name another folder`,
    );
  }
}

/** Creates the folder of a new run (config.json), or opens one to resume (its records). */
export async function openRun(plan: RunPlan): Promise<OpenRun> {
  const { options, saved, overwrite } = plan;
  const out = options.out;
  if (!saved && overwrite) {
    for (const name of RUN_FILES) {
      await Deno.remove(`${out}/${name}`, { recursive: true }).catch(() => {});
    }
  }
  await Deno.mkdir(out, { recursive: true });
  if (!saved) await writeRunConfig(options);
  const runStart = performance.now();
  const elapsed = () => (saved?.run.elapsedS ?? 0) + (performance.now() - runStart) / 1000;
  const records = saved ? (await readMetrics(out)).filter((m) => m.round <= saved.run.round) : [];
  const wall = () => Math.round(elapsed() * 10) / 10;
  return {
    ...plan,
    records,
    record: async (m) => {
      records.push({ ...m, ppl: Math.exp(m.loss), wall_s: wall() });
      await writeMetrics(out, records);
    },
    event: async (e) => {
      records.push({ ...e, wall_s: wall() });
      await writeMetrics(out, records);
    },
    save: (checkpoint) => saveRunState(out, options, elapsed(), checkpoint),
  };
}

/** The credential hashes of a served run's clients (none before any joined). */
export async function readCredentials(out: string): Promise<Map<number, string>> {
  const text = await Deno.readTextFile(`${out}/${CREDENTIALS_FILE}`).catch(() => "{}");
  return new Map(
    Object.entries(JSON.parse(text) as Record<string, string>).map(([id, hash]) => [
      Number(id),
      hash,
    ]),
  );
}

export async function writeCredentials(out: string, hashes: Map<number, string>): Promise<void> {
  await writeJson(`${out}/${CREDENTIALS_FILE}`, Object.fromEntries(hashes));
}

export async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFileAtomic(path, new TextEncoder().encode(JSON.stringify(value, null, 2) + "\n"));
}

/** metrics.jsonl with every record so far (rewritten atomically: a kill never leaves half). */
async function writeMetrics(out: string, metrics: readonly RunRecord[]): Promise<void> {
  await writeFileAtomic(
    `${out}/${METRICS_FILE}`,
    new TextEncoder().encode(metrics.map((r) => JSON.stringify(r) + "\n").join("")),
  );
}

/** A finished run's files: every client's adapters, the shared tensors, summary.json. */
export async function writeRunOutputs(
  out: string,
  { adapters, global, summary }: {
    adapters: readonly Uint8Array[];
    global: Uint8Array | null;
    summary: Summary;
  },
): Promise<void> {
  for (const [id, bytes] of adapters.entries()) {
    await Deno.mkdir(`${out}/clients/${id}`, { recursive: true });
    await writeFileAtomic(`${out}/clients/${id}/adapters.safetensors`, bytes);
  }
  if (global) await writeFileAtomic(`${out}/global.safetensors`, global);
  await writeJson(`${out}/summary.json`, summary);
}

/** The records of a run folder's metrics.jsonl (none when it has none yet). */
export async function readMetrics(out: string): Promise<RunRecord[]> {
  return parseMetrics(await Deno.readTextFile(`${out}/${METRICS_FILE}`).catch(() => ""));
}

async function saveRunState(
  out: string,
  options: TrainOptions,
  elapsedS: number,
  { round, pretrainedPpl, clients, global, server }: Checkpoint,
): Promise<void> {
  const tensors: [string, NamedTensor][] = [];
  const counters = clients.map((state, i) => {
    const saved = stateTensors(`client.${i}`, state);
    tensors.push(...saved.tensors);
    return saved.counters;
  });
  for (const [name, t] of global ?? []) tensors.push([`global.${name}`, t]);
  const saved: SavedRun = { options, round, elapsedS, pretrainedPpl, clients: counters, server };
  await writeSafetensors(`${out}/${RESUME_FILE}`, tensors, { run: JSON.stringify(saved) });
}

/** The state saved after the last completed round, or undefined before the first one. */
async function readRunState(dir: string): Promise<
  {
    run: SavedRun;
    clients: ClientState[];
    global: Map<string, NamedTensor> | null;
  } | undefined
> {
  const path = `${dir}/${RESUME_FILE}`;
  try {
    await Deno.stat(path);
  } catch {
    return undefined;
  }
  const { tensors, metadata } = await readSafetensors(path);
  const run = JSON.parse(metadata.run ?? "null") as SavedRun | null;
  if (!run) throw new Error(`${path}: not a training state (no "run" metadata)`);
  run.options = withCurrentDefaults(run.options);
  const clients = run.clients.map((c, i) => stateFromTensors(tensors, `client.${i}`, c));
  const global = [...tensors].filter(([name]) => name.startsWith("global."))
    .map(([name, t]) => [name.slice("global.".length), t] as const);
  return { run, clients, global: global.length ? new Map(global) : null };
}
