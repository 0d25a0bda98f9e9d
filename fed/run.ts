// One federated training run in its run folder (interfaces.md "Training runs"): config.json,
// metrics.jsonl, summary.json, clients/<id>/adapters.safetensors, global.safetensors, plus
// resume.safetensors (the state). The computation is fed/federation.ts; this file reads the
// base model and the scenario, and writes the outputs. After each round the whole state goes
// into one file written atomically, so a run killed at any moment resumes from its last
// completed round and ends exactly as an uninterrupted one.
import type { Engine } from "../engine/device.ts";
import { encodeAdapters } from "../model/adapters.ts";
import { type BaseCheckpoint, loadBaseCheckpoint, readConfig } from "../model/checkpoint.ts";
import {
  type NamedTensor,
  readSafetensors,
  serializeSafetensors,
  writeFileAtomic,
  writeSafetensors,
} from "../model/safetensors.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import type { ProgressBar } from "../cli/progress.ts";
import type { ClientState } from "./client.ts";
import { type StateCounters, stateFromTensors, stateTensors } from "./client_state.ts";
import {
  type Checkpoint,
  federate,
  finalTestPpl,
  makeStrategy,
  type MetricRecord,
  runRounds,
  runStreams,
  type Streams,
  summarise,
  type Summary,
  type TrainOptions,
} from "./federation.ts";
import { checkFederated } from "./methods.ts";
import { RemoteEndpoint, serverHandler } from "./network.ts";
import { type ClientCorpus, loadScenario } from "./scenarios.ts";

export interface RunHooks {
  progress: ProgressBar;
  /** Documents to use instead of the scenario's (tests use small ones). */
  corpora?: ClientCorpus[];
  /** Stop (state saved) after this many completed rounds, as if the process were killed. */
  stopAfterRound?: number;
}

const RESUME_FILE = "resume.safetensors";
const METRICS_FILE = "metrics.jsonl";

/** What resume.safetensors' metadata holds besides the tensors. */
interface SavedRun {
  options: TrainOptions;
  round: number;
  elapsedS: number;
  pretrainedPpl: number[];
  clients: StateCounters[];
}

export interface RunResult {
  summary: Summary;
  /** The frozen base model's test perplexity per client (summary.json keeps only the mean). */
  pretrainedPpl: number[];
}

/** Runs (or continues, `resume`) a training run. */
export async function runTraining(
  engine: Engine,
  start: { options: TrainOptions } | { resume: string },
  hooks: RunHooks,
): Promise<RunResult> {
  const run = await openRun(start);
  const { options, saved } = run;
  const { config, weights, categories } = await loadRunInputs(options, hooks.corpora);
  const result = await federate(engine, {
    options,
    config,
    weights,
    categories,
    resume: saved && {
      round: saved.run.round,
      pretrainedPpl: saved.run.pretrainedPpl,
      clients: saved.clients,
      global: saved.global,
    },
  }, {
    progress: hooks.progress,
    stopAfterRound: hooks.stopAfterRound,
    record: run.record,
    roundDone: run.save,
  });
  if (result.round < options.rounds) throw new RunStopped(result.round);

  const summary = summarise(
    options,
    members(categories),
    finalTestPpl(run.metrics, categories.length),
    result.pretrainedPpl,
  );
  await writeRunOutputs(options.out, {
    adapters: result.adapters.map((a) => encodeAdapters(config, a)),
    global: result.global && serializeSafetensors(result.global),
    summary,
  });
  return { summary, pretrainedPpl: result.pretrainedPpl };
}

/** A run folder opened to run in: its options, the state it continues from, and its writers. */
export interface OpenRun {
  options: TrainOptions;
  saved?: Awaited<ReturnType<typeof readRunState>>;
  /** Every metric record so far (a resumed run's up to its last completed round). */
  metrics: MetricRecord[];
  record(m: Omit<MetricRecord, "ppl" | "wall_s">): Promise<void>;
  save(checkpoint: Checkpoint): Promise<void>;
}

/** Creates a run folder (config.json), or opens one to resume (its state and records). */
export async function openRun(
  start: { options: TrainOptions } | { resume: string },
): Promise<OpenRun> {
  const saved = "resume" in start ? await readRunState(start.resume) : undefined;
  const options = "options" in start ? start.options : saved?.run.options ??
    // Killed before its first round ended: start over with the run's own options.
    await readJsonOptions(start.resume);
  const out = options.out;
  await Deno.mkdir(out, { recursive: true });
  if (!("resume" in start)) await writeJson(`${out}/config.json`, options);
  const runStart = performance.now();
  const elapsed = () => (saved?.run.elapsedS ?? 0) + (performance.now() - runStart) / 1000;
  const metrics = saved ? (await readMetrics(out)).filter((m) => m.round <= saved.run.round) : [];
  return {
    options,
    saved,
    metrics,
    record: async (m) => {
      metrics.push({ ...m, ppl: Math.exp(m.loss), wall_s: Math.round(elapsed() * 10) / 10 });
      await writeMetrics(out, metrics);
    },
    save: (checkpoint) => saveRunState(out, options, elapsed(), checkpoint),
  };
}

/** What summary.json says of each client's data. */
export function members(categories: readonly Streams[]): { name: string; trainTokens: number }[] {
  return categories.map((c) => ({ name: c.name, trainTokens: c.train.length }));
}

/** A run's inputs: its base model and its categories' token streams (`corpora`: instead of the
 * scenario's documents). */
export async function loadRunInputs(
  options: TrainOptions,
  corpora?: readonly ClientCorpus[],
): Promise<BaseCheckpoint & { categories: Streams[] }> {
  const { config, weights } = await loadBaseCheckpoint(options.model);
  const tokenizer = await loadTokenizer(options.model, config.vocab_size);
  const documents = corpora ?? await loadScenario(options.scenario, {
    clients: options.clients,
    ood: options.ood,
    seed: options.seed,
  });
  return { config, weights, categories: runStreams(options, tokenizer, documents) };
}

/**
 * Serves a networked run (fed/network.ts) from its folder: waits for every client to join, then
 * runs the rounds with them and writes config.json, metrics.jsonl, summary.json and
 * global.safetensors. The clients' adapters stay on their devices (`deno task join --out`).
 */
export async function serveRun(
  start: { options: TrainOptions } | { resume: string },
  hooks: {
    progress: ProgressBar;
    hostname: string;
    port: number;
    /** Stop (state saved) after this many completed rounds, as if the process were killed. */
    stopAfterRound?: number;
    /** Called with the server's address once it listens. */
    listening?(url: string): void;
  },
): Promise<RunResult> {
  // Checked before the folder is made when the options are given.
  if ("options" in start) checkFederated(start.options.method);
  const run = await openRun(start);
  const { options, saved } = run;
  checkFederated(options.method);
  const base = await readConfig(options.model);
  const endpoints = Array.from({ length: options.clients }, (_, id) => new RemoteEndpoint(id));
  const info = () => ({ options, base, needPretrained: !saved });
  const server = Deno.serve(
    { hostname: hooks.hostname, port: hooks.port, onListen: () => {} },
    serverHandler(info, endpoints),
  );
  const host = hooks.hostname.includes(":") ? `[${hooks.hostname}]` : hooks.hostname;
  const url = `http://${host}:${server.addr.port}`;
  try {
    hooks.progress.log(
      `${options.method} on ${options.scenario}: waiting for ${options.clients} clients at ` +
        `${url} (on each device: deno task join --server ${url} --client <id> --out DIR)`,
    );
    hooks.listening?.(url);
    const joined = await Promise.all(endpoints.map((e) => e.joined));
    const pretrainedPpl = saved?.run.pretrainedPpl ?? joined as number[];
    hooks.progress.log(
      `${options.clients} clients joined: ${endpoints.map((e) => e.name).join(", ")}`,
    );
    const strategy = makeStrategy(options, base);
    if (saved) strategy.restore(saved.global);
    const round = await runRounds({
      options,
      strategy,
      endpoints,
      testIds: endpoints.map((e) => [e.id]),
      startRound: saved?.run.round ?? 0,
      parallel: true,
    }, {
      progress: hooks.progress,
      record: run.record,
      stopAfterRound: hooks.stopAfterRound,
      roundDone: (round) =>
        run.save({ round, pretrainedPpl, clients: [], global: strategy.parameters() }),
    });
    if (round < options.rounds) throw new RunStopped(round);
    const summary = summarise(
      options,
      endpoints.map((e) => ({ name: e.name, trainTokens: e.trainTokens })),
      finalTestPpl(run.metrics, options.clients),
      pretrainedPpl,
    );
    const global = strategy.globalModel();
    await writeRunOutputs(options.out, {
      adapters: [],
      global: global && serializeSafetensors(global),
      summary,
    });
    // The clients wrote their adapters at the last evaluation; "done" only ends their loops,
    // so a client that does not come for it within a minute is not waited for.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const told = Promise.all(endpoints.map((e) => e.finish())).then(() => true, () => false);
    const late = new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), 60_000));
    if (!await Promise.race([told, late])) {
      hooks.progress.log("some clients did not collect the end of the run; stopping anyway");
    }
    clearTimeout(timer);
    return { summary, pretrainedPpl };
  } finally {
    for (const e of endpoints) e.abandon(new Error("the server stopped"));
    await server.shutdown();
  }
}

/** Thrown when `stopAfterRound` ended a run early (tests of resuming). */
export class RunStopped extends Error {
  constructor(readonly round: number) {
    super(`stopped after round ${round}`);
  }
}

export async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFileAtomic(path, new TextEncoder().encode(JSON.stringify(value, null, 2) + "\n"));
}

/** metrics.jsonl with every record so far (rewritten atomically: a kill never leaves half). */
async function writeMetrics(out: string, metrics: readonly MetricRecord[]): Promise<void> {
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

/** The records of a metrics.jsonl text, one JSON object per non-empty line. */
export function parseMetrics(text: string): MetricRecord[] {
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as MetricRecord);
}

async function readMetrics(out: string): Promise<MetricRecord[]> {
  return parseMetrics(await Deno.readTextFile(`${out}/${METRICS_FILE}`).catch(() => ""));
}

async function saveRunState(
  out: string,
  options: TrainOptions,
  elapsedS: number,
  { round, pretrainedPpl, clients, global }: Checkpoint,
): Promise<void> {
  const tensors: [string, NamedTensor][] = [];
  const counters = clients.map((state, i) => {
    const saved = stateTensors(`client.${i}`, state);
    tensors.push(...saved.tensors);
    return saved.counters;
  });
  for (const [name, t] of global ?? []) tensors.push([`global.${name}`, t]);
  const saved: SavedRun = { options, round, elapsedS, pretrainedPpl, clients: counters };
  await writeSafetensors(`${out}/${RESUME_FILE}`, tensors, { run: JSON.stringify(saved) });
}

async function readJsonOptions(dir: string): Promise<TrainOptions> {
  const path = `${dir}/config.json`;
  try {
    return JSON.parse(await Deno.readTextFile(path)) as TrainOptions;
  } catch (e) {
    throw new Error(`--resume ${dir}: cannot read ${path} (${(e as Error).message})`);
  }
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
  const clients = run.clients.map((c, i) => stateFromTensors(tensors, `client.${i}`, c));
  const global = [...tensors].filter(([name]) => name.startsWith("global."))
    .map(([name, t]) => [name.slice("global.".length), t] as const);
  return { run, clients, global: global.length ? new Map(global) : null };
}
