// A training run in its folder (fed/run_folder.ts): runTraining simulates the federation in this
// process (fed/simulation.ts); serveRun serves it to clients elsewhere (fed/http_server.ts). Both
// read the base model and the scenario, write the outputs, and resume from the folder's state.
import type { Engine } from "../engine/device.ts";
import { encodeAdapters } from "../model/adapters.ts";
import { type BaseCheckpoint, loadBaseCheckpoint, readConfig } from "../model/checkpoint.ts";
import type { Progress } from "../model/progress.ts";
import { serializeSafetensors } from "../model/safetensors.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { makeStrategy } from "./factories.ts";
import { RemoteEndpoint, serverHandler } from "./http_server.ts";
import { checkFederated } from "./methods.ts";
import type { TrainOptions } from "./options.ts";
import { finalTestPpl, summarise, type Summary } from "./records.ts";
import { runRounds } from "./rounds.ts";
import { openRun, writeRunOutputs } from "./run_folder.ts";
import { type ClientCorpus, loadScenario } from "./scenarios.ts";
import { federate } from "./simulation.ts";
import { members, runStreams, type Streams } from "./streams.ts";

export interface RunHooks {
  progress: Progress;
  /** Documents to use instead of the scenario's (tests use small ones). */
  corpora?: ClientCorpus[];
  /** Stop (state saved) after this many completed rounds, as if the process were killed. */
  stopAfterRound?: number;
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
