// One federated run simulated in this process (method.md §3), without files: the server (a
// Strategy) and the clients exchange encoded messages only, through the rounds loop every
// transport shares (fed/rounds.ts). fed/run.ts wraps it with the run folder (outputs, resume);
// a browser tab runs it from fetched bytes (cli/browser_page.ts). Both compute the same thing.
import type { Engine } from "../engine/device.ts";
import type { AdapterConfig } from "../model/adapters.ts";
import type { BaseConfig } from "../model/base.ts";
import { StreamEvaluator } from "../model/evaluate.ts";
import type { BaseModel } from "../model/base_model.ts";
import { createModel } from "../model/load.ts";
import { type BatchProgress, evaluationProgress } from "../model/progress.ts";
import { OptionError } from "../model/option_error.ts";
import type { NamedTensor } from "../model/safetensors.ts";
import type { ClientState } from "./client.ts";
import { LocalEndpoint } from "./endpoint.ts";
import { makeClient, makeStrategy } from "./factories.ts";
import { METHOD_SPECS } from "./methods.ts";
import { checkAgainstBase, type TrainOptions } from "./options.ts";
import { type RoundHooks, runRounds } from "./rounds.ts";
import type { StrategyState } from "./strategy.ts";
import { pool, type Streams } from "./streams.ts";

/** Where a run continues from: the state after its last completed round. */
export interface Checkpoint {
  round: number;
  pretrainedPpl: number[];
  clients: ClientState[];
  global: Map<string, NamedTensor> | null;
  /** The server's state beyond its parameters (central DP's noise stream). */
  server: StrategyState;
}

/** What the caller sees of a run as it goes (progress, records, the state after each round). */
export interface FederationHooks extends Omit<RoundHooks, "roundDone"> {
  /** The state after a completed round (for resuming). */
  roundDone?(checkpoint: Checkpoint): Promise<void>;
}

export interface FederationResult {
  /** Completed rounds (less than options.rounds when stopped early). */
  round: number;
  pretrainedPpl: number[];
  /** Every client's adapters at the end (their configs depend on the method). */
  adapters: { config: AdapterConfig; values: Map<string, Float32Array> }[];
  /** The server's shared tensors at the end (null when nothing is shared). */
  global: Map<string, NamedTensor> | null;
}

/**
 * Runs (or continues from `resume`) the federation of `options` on the base model `config` +
 * `weights` and the categories' token streams. Records go to `hooks.record` as they happen.
 */
export async function federate(
  engine: Engine,
  run: {
    options: TrainOptions;
    config: BaseConfig;
    weights: Map<string, Float32Array>;
    categories: readonly Streams[];
    resume?: Checkpoint;
  },
  hooks: FederationHooks,
): Promise<FederationResult> {
  const { options, config, categories, resume } = run;
  const { batch: B, seq: T } = options;
  checkAgainstBase(options, config);
  const spec = METHOD_SPECS[options.method];
  if (categories.length !== options.clients) {
    throw new OptionError(
      "clients",
      `is ${options.clients}, but ${categories.length} categories came`,
    );
  }
  const progress = hooks.progress;
  progress.log(
    `${options.method} on ${options.scenario}${options.ood ? " (out of distribution)" : ""}: ` +
      categories.map((c) => `${c.name} ${c.train.length}/${c.val.length}/${c.test.length}`)
        .join(", ") +
      " train/val/test tokens",
  );
  const model = createModel(engine, config, run.weights);
  const record = hooks.record;

  // The frozen base on every category's test split: the comparison column (and the whole run
  // for `pretrained`).
  const pretrainedPpl = resume?.pretrainedPpl ?? [];
  if (!resume) {
    for (const [k, c] of categories.entries()) {
      const context = `base model: client ${k} (${c.name}) test`;
      pretrainedPpl.push(
        await basePerplexity(model, c.test, B, T, evaluationProgress(progress, context)),
      );
    }
  }
  if (spec.frozen) {
    for (const [id, ppl] of pretrainedPpl.entries()) {
      await record({ round: 0, step: 0, client: id, split: "test", loss: Math.log(ppl) });
    }
    model.dispose();
    return { round: options.rounds, pretrainedPpl, adapters: [], global: null };
  }

  // Clients: one per category, or one on the pooled data (centralized).
  const pooled = spec.pooled ?? false;
  const members = pooled ? [pool(categories)] : categories;
  const clients = members.map((data, id) => makeClient(engine, model, options, data, id));
  const strategy = makeStrategy(options, config);
  const endpoints = clients.map((client) =>
    new LocalEndpoint(client, (pooled ? categories : [categories[client.id]]).map((c) => c.test))
  );
  if (resume) {
    strategy.restore(resume.global, resume.server);
    clients.forEach((c, i) => c.importState(resume.clients[i]));
  }
  const round = await runRounds({
    options,
    strategy,
    endpoints,
    testIds: endpoints.map((e) => pooled ? categories.map((_, k) => k) : [e.id]),
    startRound: resume?.round ?? 0,
  }, {
    ...hooks,
    roundDone: async (round) =>
      await hooks.roundDone?.({
        round,
        pretrainedPpl,
        clients: await Promise.all(clients.map((c) => c.exportState())),
        global: strategy.parameters(),
        server: strategy.exportState(),
      }),
  });

  const adapters = [];
  for (const client of clients) {
    adapters.push({ config: client.adapters.config, values: await client.adapters.values() });
  }
  const global = strategy.globalModel();
  for (const endpoint of endpoints) endpoint.dispose();
  for (const client of clients) client.dispose();
  model.dispose();
  return { round, pretrainedPpl, adapters, global };
}

/** The frozen base model's perplexity over every token of `stream` (the comparison column). */
export async function basePerplexity(
  model: BaseModel,
  stream: Uint32Array,
  batch: number,
  seq: number,
  onBatch?: BatchProgress,
): Promise<number> {
  const evaluator = new StreamEvaluator(
    model.engine,
    model.config,
    stream,
    batch,
    seq,
    (tape, b) => model.forward(tape, b).tokenLosses,
  );
  try {
    return Math.exp(await evaluator.meanLoss(onBatch));
  } finally {
    evaluator.dispose();
  }
}
