// A training run in its folder (fed/run_folder.ts): runTraining simulates the federation in this
// process (fed/simulation.ts); serveRun serves it to clients elsewhere (fed/http_server.ts). Both
// read the base model and the scenario, write the outputs, and resume from the folder's state.
import type { Engine } from "../engine/device.ts";
import { encodeAdapters } from "../model/adapters.ts";
import { type BaseCheckpoint, loadBaseCheckpoint, readConfig } from "../model/checkpoint.ts";
import type { Progress } from "../model/progress.ts";
import { OptionError } from "../model/option_error.ts";
import { HubError, hubProgress, modelFolder, pinnedModel } from "../model/model_source.ts";
import { CheckpointError, serializeSafetensors } from "../model/safetensors.ts";
import { TokenizerError } from "../model/tokenizer_contract.ts";
import { loadModelTokenizer } from "../model/tokenizer.ts";
import { makeStrategy } from "./factories.ts";
import { RemoteEndpoint, serverHandler } from "./http_server.ts";
import { checkFederated } from "./methods.ts";
import { checkAgainstBase, type TrainOptions } from "./options.ts";
import { summarise, type Summary } from "./records.ts";
import { runRounds } from "./rounds.ts";
import {
  openRun,
  planRun,
  readCredentials,
  type RunPlan,
  writeCredentials,
  writeRunOutputs,
} from "./run_folder.ts";
import { type ClientCorpus, loadScenario } from "./scenarios.ts";
import { federate } from "./simulation.ts";
import { members, runStreams, type Streams } from "./streams.ts";

export interface RunHooks {
  progress: Progress;
  /** Documents to use instead of the scenario's (tests use small ones). */
  corpora?: ClientCorpus[];
  /** Stop (state saved) after this many completed rounds, as if the process were killed. */
  stopAfterRound?: number;
  /** A new run may replace a run already in its folder. */
  overwrite?: boolean;
}

export interface RunResult {
  /** The run folder. */
  out: string;
  summary: Summary;
  /** The frozen base model's test perplexity per client (summary.json keeps only the mean). */
  pretrainedPpl: number[];
}

/** Where a Hub download reports (a Progress, or console). */
type Logger = { log(line: string): void };

/** A run read and checked, with its inputs loaded, before anything is created. */
export interface PreparedRun {
  plan: RunPlan;
  inputs: BaseCheckpoint & { categories: Streams[] };
}

/** Reads and checks everything a training run needs (its folder, base model and data). */
export async function prepareRun(
  start: { options: TrainOptions } | { resume: string },
  hooks: Pick<RunHooks, "corpora" | "overwrite"> & { progress?: Logger } = {},
): Promise<PreparedRun> {
  const plan = await pinBaseModel(
    await planRun(start, { overwrite: hooks.overwrite }),
    hooks.progress,
  );
  return { plan, inputs: await loadRunInputs(plan.options, hooks.corpora, hooks.progress) };
}

/** The plan with a Hub base model pinned to its commit (downloading it if need be): what the
 * run's config.json records. */
async function pinBaseModel(plan: RunPlan, progress?: Logger): Promise<RunPlan> {
  const spec = plan.options.model;
  const model = await asModelOption(() => pinnedModel(spec, hubProgress(spec, progress)));
  return model === spec ? plan : { ...plan, options: { ...plan.options, model } };
}

/** Runs (or continues, `resume`) a training run; `prepared` once checked by prepareRun. */
export async function runTraining(
  engine: Engine,
  start: { options: TrainOptions } | { resume: string } | PreparedRun,
  hooks: RunHooks,
): Promise<RunResult> {
  // Everything that can be checked is, before the run folder is made.
  const { plan, inputs } = "plan" in start ? start : await prepareRun(start, hooks);
  const { options, saved } = plan;
  const { config, weights, categories } = inputs;
  const run = await openRun(plan);
  hooks.progress.log(`run folder: ${options.out}`);
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
      server: saved.run.server ?? {},
    },
  }, {
    progress: hooks.progress,
    stopAfterRound: hooks.stopAfterRound,
    record: run.record,
    event: run.event,
    roundDone: run.save,
  });
  if (result.round < options.rounds) throw new RunStopped(result.round);

  const summary = summarise(
    options,
    members(categories),
    run.records,
    result.pretrainedPpl,
  );
  await writeRunOutputs(options.out, {
    adapters: result.adapters.map((a) => encodeAdapters(config, a)),
    global: result.global && serializeSafetensors(result.global),
    summary,
  });
  return { out: options.out, summary, pretrainedPpl: result.pretrainedPpl };
}

/** A run's inputs: its base model and its categories' token streams (`corpora`: instead of the
 * scenario's documents). */
export async function loadRunInputs(
  options: TrainOptions,
  corpora?: readonly ClientCorpus[],
  progress?: Logger,
): Promise<BaseCheckpoint & { categories: Streams[] }> {
  const { config, weights, tokenizer } = await asModelOption(async () => {
    const dir = await modelFolder(options.model, hubProgress(options.model, progress));
    const base = await loadBaseCheckpoint(dir);
    return { ...base, tokenizer: await loadModelTokenizer(dir, base.config) };
  });
  checkAgainstBase(options, config);
  const documents = corpora ?? await loadScenario(options.scenario, {
    clients: options.clients,
    ood: options.ood,
    seed: options.seed,
  });
  return { config, weights, categories: runStreams(options, tokenizer, documents) };
}

/** `read()` of the base model, with a model that cannot be read an error of the `model` option. */
async function asModelOption<T>(read: () => Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (e) {
    if (e instanceof CheckpointError || e instanceof TokenizerError) {
      throw new OptionError("model", `is not a base model: ${e.message}`);
    }
    if (e instanceof HubError) throw new OptionError("model", `cannot be downloaded: ${e.message}`);
    throw e;
  }
}

/**
 * Serves a networked run (fed/http_server.ts) from its folder: waits for every client to join, then
 * runs the rounds with them and writes config.json, metrics.jsonl, summary.json and
 * global.safetensors. The clients' adapters stay on their devices (`deno task join --out`).
 */
export async function serveRun(
  start: { options: TrainOptions } | { resume: string },
  hooks: {
    progress: Progress;
    hostname: string;
    port: number;
    /** A new run may replace a run already in its folder. */
    overwrite?: boolean;
    /** Stop (state saved) after this many completed rounds, as if the process were killed. */
    stopAfterRound?: number;
    /** Called with the server's address once it listens. */
    listening?(url: string): void;
  },
): Promise<RunResult> {
  // Everything that can be checked is, before the run folder is made.
  const plan = await pinBaseModel(
    await planRun(start, { overwrite: hooks.overwrite }),
    hooks.progress,
  );
  const { options, saved } = plan;
  checkFederated(options.method);
  const base = await asModelOption(async () => readConfig(await modelFolder(options.model)));
  checkAgainstBase(options, base);
  const run = await openRun(plan);
  hooks.progress.log(`run folder: ${options.out}`);
  const credentials = await readCredentials(options.out);
  const endpoints = Array.from(
    { length: options.clients },
    (_, id) => new RemoteEndpoint(id, credentials.get(id) ?? null),
  );
  const info = () => ({ options, base, needPretrained: !saved });
  let credentialsWritten = Promise.resolve();
  const server = Deno.serve(
    { hostname: hooks.hostname, port: hooks.port, onListen: () => {} },
    serverHandler(info, endpoints, (id, hash) => {
      credentials.set(id, hash);
      // One write at a time, each of the whole map: a later join's file never lands first.
      const written = credentialsWritten.then(() => writeCredentials(options.out, credentials));
      credentialsWritten = written.catch(() => {});
      return written;
    }),
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
    if (saved) strategy.restore(saved.global, saved.run.server);
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
      event: run.event,
      roundDone: (round) =>
        run.save({
          round,
          pretrainedPpl,
          clients: [],
          global: strategy.parameters(),
          server: strategy.exportState(),
        }),
    });
    if (round < options.rounds) throw new RunStopped(round);
    const summary = summarise(
      options,
      endpoints.map((e) => ({ name: e.name, trainTokens: e.trainTokens })),
      run.records,
      pretrainedPpl,
      { reportedByClients: true },
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
    return { out: options.out, summary, pretrainedPpl };
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
