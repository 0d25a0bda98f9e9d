// One federated training run in its run folder (interfaces.md "Training runs"): config.json,
// metrics.jsonl, summary.json, clients/<id>/adapters.safetensors, global.safetensors, plus
// resume.safetensors (the state). The computation is fed/federation.ts; this file reads the
// base model and the scenario, and writes the outputs. After each round the whole state goes
// into one file written atomically, so a run killed at any moment resumes from its last
// completed round and ends exactly as an uninterrupted one.
import type { AdamWState } from "../engine/optim.ts";
import type { Engine } from "../engine/device.ts";
import { encodeAdapters } from "../model/adapters.ts";
import { type BaseCheckpoint, loadBaseCheckpoint } from "../model/checkpoint.ts";
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
import {
  type Checkpoint,
  federate,
  finalTestPpl,
  type MetricRecord,
  runStreams,
  type Streams,
  summarise,
  type Summary,
  type TrainOptions,
} from "./federation.ts";
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
  clients: {
    step: number;
    trainRng: number;
    routerRng: number;
    experts: number;
    routers?: number;
  }[];
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
  const saved = "resume" in start ? await readRunState(start.resume) : undefined;
  const options = "options" in start ? start.options : saved?.run.options ??
    // Killed before its first round ended: start over with the run's own options.
    await readJsonOptions(start.resume);
  const out = options.out;
  await Deno.mkdir(out, { recursive: true });
  if (!("resume" in start)) await writeJson(`${out}/config.json`, options);

  const { config, weights, categories } = await loadRunInputs(options, hooks.corpora);
  const runStart = performance.now();
  const elapsed = () => (saved?.run.elapsedS ?? 0) + (performance.now() - runStart) / 1000;
  const metrics = saved ? (await readMetrics(out)).filter((m) => m.round <= saved.run.round) : [];
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
    record: async (m) => {
      metrics.push({ ...m, ppl: Math.exp(m.loss), wall_s: Math.round(elapsed() * 10) / 10 });
      await writeMetrics(out, metrics);
    },
    roundDone: (checkpoint) => saveRunState(out, options, elapsed(), checkpoint),
  });
  if (result.round < options.rounds) throw new RunStopped(result.round);

  const summary = summarise(
    options,
    categories,
    finalTestPpl(metrics, categories.length),
    result.pretrainedPpl,
  );
  await writeRunOutputs(out, {
    adapters: result.adapters.map((a) => encodeAdapters(config, a)),
    global: result.global && serializeSafetensors(result.global),
    summary,
  });
  return { summary, pretrainedPpl: result.pretrainedPpl };
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
export async function writeMetrics(out: string, metrics: readonly MetricRecord[]): Promise<void> {
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
  const moments = (prefix: string, state: AdamWState) => {
    state.m.forEach((m, k) => tensors.push([`${prefix}.m.${k}`, { shape: [m.length], data: m }]));
    state.v.forEach((v, k) => tensors.push([`${prefix}.v.${k}`, { shape: [v.length], data: v }]));
  };
  const counters = clients.map((state, i) => {
    for (const [name, data] of state.adapters) {
      tensors.push([`client.${i}.${name}`, { shape: [data.length], data }]);
    }
    moments(`client.${i}.experts`, state.experts);
    if (state.routers) moments(`client.${i}.routers`, state.routers);
    return {
      step: state.step,
      trainRng: state.trainRng,
      routerRng: state.routerRng,
      experts: state.experts.step,
      routers: state.routers?.step,
    };
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
  const byPrefix = (prefix: string) =>
    [...tensors].filter(([name]) => name.startsWith(prefix)).map((
      [name, t],
    ) => [name.slice(prefix.length), t] as const);
  const moments = (prefix: string, step: number): AdamWState => {
    const list = (kind: string) =>
      byPrefix(`${prefix}.${kind}.`).sort((a, b) => Number(a[0]) - Number(b[0])).map(([, t]) =>
        t.data
      );
    return { step, m: list("m"), v: list("v") };
  };
  const clients = run.clients.map((c, i): ClientState => ({
    step: c.step,
    trainRng: c.trainRng,
    routerRng: c.routerRng,
    adapters: new Map(
      byPrefix(`client.${i}.h.`).map(([name, t]) => [`h.${name}`, t.data]),
    ),
    experts: moments(`client.${i}.experts`, c.experts),
    routers: c.routers === undefined ? undefined : moments(`client.${i}.routers`, c.routers),
  }));
  const globalEntries = byPrefix("global.");
  return {
    run,
    clients,
    global: globalEntries.length ? new Map(globalEntries.map(([n, t]) => [n, t])) : null,
  };
}
