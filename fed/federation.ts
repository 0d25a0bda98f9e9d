// One federated run's computation, without files (method.md §3): the server (a Strategy) and the
// clients exchange encoded messages only. Per round every client pulls the shared tensors, takes
// T expert steps (with its router phases) and sends back what its method shares; the server
// averages; every client's test split is evaluated before any training and every few rounds.
// fed/run.ts wraps it with the run folder (outputs, resume); in a browser tab it runs from
// fetched bytes (cli/browser_page.ts). Both therefore compute the same thing.
import type { Engine } from "../engine/device.ts";
import { type AdapterConfig, adapterRole, adapterShapes, initAdapters } from "../model/adapters.ts";
import type { GPT2Config } from "../model/config.ts";
import { StreamEvaluator } from "../model/evaluate.ts";
import { GPT2 } from "../model/gpt2.ts";
import { tokenStream } from "../model/pretrain_data.ts";
import type { NamedTensor } from "../model/safetensors.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import type { ProgressUpdate } from "../cli/progress.ts";
import type { Weighting } from "./aggregate.ts";
import { Client, type ClientState, mix, type StepReport } from "./client.ts";
import {
  isShared,
  type Method,
  METHOD_SPECS,
  methodAdapterConfig,
  methodInitAdapters,
} from "./methods.ts";
import type { ClientCorpus, Scenario } from "./scenarios.ts";
import { FedAvgStrategy, PclStrategy } from "./strategy.ts";

/** Every resolved option of a run: config.json holds exactly this. */
export interface TrainOptions {
  method: Method;
  scenario: Scenario;
  clients: number;
  /** E_i per client. */
  experts: number[];
  /** Training tokens kept per client (the first ones of its split); null keeps them all. */
  trainTokens: (number | null)[];
  model: string;
  rounds: number;
  localSteps: number;
  /** The test split is evaluated before training, after every this many rounds and at the end. */
  evalEvery: number;
  routerEvery: number;
  routerSteps: number;
  routerOnTrain: boolean;
  ood: boolean;
  lr: number;
  batch: number;
  seq: number;
  seed: number;
  rank: number;
  alpha: number;
  scaling: "rslora" | "standard";
  topK: number;
  lbCoef: number;
  lbRho: number;
  aggregation: Weighting;
  out: string;
}

export interface MetricRecord {
  round: number;
  step: number;
  client: number;
  split: "train" | "val" | "test";
  loss: number;
  ppl: number;
  wall_s: number;
}

export interface ClientSummary {
  id: number;
  name: string;
  n_experts: number;
  train_tokens: number;
  test_ppl: number;
}

export interface Summary {
  method: Method;
  scenario: Scenario;
  ood: boolean;
  seed: number;
  base_model: string;
  clients: ClientSummary[];
  mean_test_ppl: number;
  pretrained_mean_test_ppl: number;
}

/** A category's data as token streams. */
export interface Streams {
  name: string;
  train: Uint32Array;
  val: Uint32Array;
  test: Uint32Array;
}

/** Where a run continues from: the state after its last completed round. */
export interface Checkpoint {
  round: number;
  pretrainedPpl: number[];
  clients: ClientState[];
  global: Map<string, NamedTensor> | null;
}

/** What the caller sees of a run as it goes (the progress bar's calls, the records, the state). */
export interface FederationHooks {
  progress: {
    total: number;
    begin(step: number): void;
    update(update: ProgressUpdate): void;
    log(message: string): void;
    done(): void;
  };
  /** A metric record; the caller keeps them (finalTestPpl reads the result from them). */
  record(m: Omit<MetricRecord, "ppl" | "wall_s">): Promise<void>;
  /** The state after a completed round (for resuming). */
  roundDone?(checkpoint: Checkpoint): Promise<void>;
  /** Stop after this many completed rounds, as if the process were killed. */
  stopAfterRound?: number;
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

/** The token streams of a run's categories: its corpora tokenised, training splits capped. */
export function runStreams(
  options: TrainOptions,
  tokenizer: Tokenizer,
  corpora: readonly ClientCorpus[],
): Streams[] {
  return corpora.map((c, id) => ({
    name: c.name,
    // Runs from before --train-tokens have no caps in their config.json.
    train: capTrain(
      tokenStream(tokenizer, c.train),
      options.trainTokens?.[id] ?? null,
      id,
      options.seq,
    ),
    val: tokenStream(tokenizer, c.val),
    test: tokenStream(tokenizer, c.test),
  }));
}

/**
 * Runs (or continues from `resume`) the federation of `options` on the base model `config` +
 * `weights` and the categories' token streams. Records go to `hooks.record` as they happen.
 */
export async function federate(
  engine: Engine,
  run: {
    options: TrainOptions;
    config: GPT2Config;
    weights: Map<string, Float32Array>;
    categories: readonly Streams[];
    resume?: Checkpoint;
  },
  hooks: FederationHooks,
): Promise<FederationResult> {
  const { options, config, categories, resume } = run;
  const { batch: B, seq: T } = options;
  if (T > config.n_positions) {
    throw new RangeError(`--seq ${T} exceeds the model's context of ${config.n_positions} tokens`);
  }
  const spec = METHOD_SPECS[options.method];
  if (categories.length !== options.clients) {
    throw new RangeError(`${categories.length} categories for --clients ${options.clients}`);
  }
  const progress = hooks.progress;
  progress.log(
    `${options.method} on ${options.scenario}${options.ood ? " (out of distribution)" : ""}: ` +
      categories.map((c) => `${c.name} ${c.train.length}/${c.val.length}/${c.test.length}`)
        .join(", ") +
      " train/val/test tokens",
  );
  const model = new GPT2(engine, config, run.weights);
  const record = hooks.record;

  // The frozen base on every category's test split: the comparison column (and the whole run
  // for `pretrained`).
  const pretrainedPpl = resume?.pretrainedPpl ?? [];
  if (!resume) {
    for (const c of categories) pretrainedPpl.push(await basePerplexity(model, c.test, B, T));
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
    strategy.restore(resume.global);
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
  model: GPT2,
  stream: Uint32Array,
  batch: number,
  seq: number,
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
    return Math.exp(await evaluator.meanLoss());
  } finally {
    evaluator.dispose();
  }
}

/** Expert steps per round of a client of `options` (the pooled one takes every category's share,
 * so it trains on as many tokens as the whole federation does). */
export function localSteps(options: TrainOptions): number {
  const spec = METHOD_SPECS[options.method];
  return spec.pooled ? options.localSteps * options.clients : options.localSteps;
}

/** Client `id` of a run: its adapters from the method's init, its data, its schedule. */
export function makeClient(
  engine: Engine,
  model: GPT2,
  options: TrainOptions,
  data: Streams,
  id: number,
): Client {
  const spec = METHOD_SPECS[options.method];
  const config = clientAdapterConfig(options, model.config, id);
  const init = methodInitAdapters(spec, model.config, config, mix(options.seed, id, 0));
  const schedule = {
    batch: options.batch,
    seq: options.seq,
    lr: options.lr,
    totalSteps: options.rounds * localSteps(options),
    routerEvery: options.routerEvery,
    routerSteps: options.routerSteps,
  };
  return new Client(
    engine,
    model,
    id,
    { name: data.name, train: data.train, router: options.routerOnTrain ? data.train : data.val },
    spec,
    config,
    init,
    schedule,
    options.seed,
  );
}

function clientAdapterConfig(options: TrainOptions, base: GPT2Config, id: number): AdapterConfig {
  const { rank, alpha, scaling, topK, lbCoef, lbRho } = options;
  return methodAdapterConfig(
    METHOD_SPECS[options.method],
    { rank, alpha, scaling, topK, lbCoef, lbRho },
    options.experts[id],
    base,
  );
}

/** The server of a run, holding the initial shared tensors every client starts from (method.md
 * §2): FedAvg's average, or PCL's bundle. It needs the base model's config, not its weights. */
export function makeStrategy(
  options: TrainOptions,
  base: GPT2Config,
): FedAvgStrategy | PclStrategy {
  const spec = METHOD_SPECS[options.method];
  const config = clientAdapterConfig(options, base, 0);
  const serverInit = initAdapters(base, config, options.seed);
  const initial = new Map<string, NamedTensor>();
  const syncSpec = {
    ...spec,
    shares: spec.shares === "all" ? "all" as const : "generalist" as const,
  };
  for (const [name, shape] of adapterShapes(base, config)) {
    if (isShared(syncSpec, adapterRole(name))) {
      initial.set(name, { shape, data: serverInit.get(name)! });
    }
  }
  return spec.personal
    ? new PclStrategy(initial)
    : new FedAvgStrategy(initial, spec.shares !== "none", options.aggregation);
}

/** A client's reply to a fit: the message for the server and its mean training loss. */
export interface FitReply {
  result: Uint8Array;
  /** The client's expert steps so far. */
  step: number;
  meanLoss: number;
}

/** A client's reply to an evaluation: the mean test loss of each of its test streams. */
export interface EvaluateReply {
  step: number;
  losses: number[];
}

/**
 * What the server's rounds ask of one client. In one process a LocalEndpoint calls the Client;
 * across processes fed/network.ts carries the same calls as HTTP messages.
 */
export interface ClientEndpoint {
  readonly id: number;
  readonly name: string;
  evaluate(round: number, parameters: Uint8Array | null): Promise<EvaluateReply>;
  fit(
    round: number,
    steps: number,
    parameters: Uint8Array | null,
    onStep: (report: StepReport) => void,
  ): Promise<FitReply>;
}

/** A Client of this process as an endpoint, evaluated on `tests` (its test streams). */
export class LocalEndpoint implements ClientEndpoint {
  readonly #evaluators: StreamEvaluator[];

  constructor(readonly client: Client, tests: readonly Uint32Array[]) {
    this.#evaluators = tests.map((stream) => client.evaluator(stream));
  }

  get id(): number {
    return this.client.id;
  }

  get name(): string {
    return this.client.data.name;
  }

  async evaluate(_round: number, parameters: Uint8Array | null): Promise<EvaluateReply> {
    await this.client.receive(parameters);
    const losses: number[] = [];
    for (const evaluator of this.#evaluators) losses.push(await evaluator.meanLoss());
    return { step: this.client.step, losses };
  }

  async fit(
    round: number,
    steps: number,
    parameters: Uint8Array | null,
    onStep: (report: StepReport) => void,
  ): Promise<FitReply> {
    await this.client.receive(parameters);
    let lossSum = 0;
    const result = await this.client.fit(round, steps, (report) => {
      lossSum += report.loss;
      onStep(report);
    });
    return { result, step: this.client.step, meanLoss: lossSum / steps };
  }

  dispose(): void {
    for (const evaluator of this.#evaluators) evaluator.dispose();
  }
}

/**
 * The server's side of a run from `startRound`: evaluates every client before training (round
 * 0), then per round configures each client's fit, aggregates the results in client order,
 * evaluates every `evalEvery` rounds and at the end, and reports each completed round. Records
 * come in client order whether clients are asked one after another or at once.
 */
export async function runRounds(
  { options, strategy, endpoints, testIds, startRound, parallel = false }: {
    options: TrainOptions;
    strategy: FedAvgStrategy | PclStrategy;
    endpoints: readonly ClientEndpoint[];
    /** Endpoint i's losses[k] is the test loss of category testIds[i][k]. */
    testIds: readonly number[][];
    startRound: number;
    /** Ask every client at once (they are other processes) instead of one after another. */
    parallel?: boolean;
  },
  hooks: Omit<FederationHooks, "roundDone"> & { roundDone(round: number): Promise<void> },
): Promise<number> {
  const { progress, record } = hooks;
  const ids = endpoints.map((e) => e.id);
  // Clients of other processes work at once; those of this one take turns on its GPU.
  const each = async <T, R>(items: T[], ask: (item: T) => Promise<R>): Promise<R[]> => {
    if (parallel) return await Promise.all(items.map(ask));
    const replies: R[] = [];
    for (const item of items) replies.push(await ask(item));
    return replies;
  };
  const steps = localSteps(options);
  const evaluate = async (round: number) => {
    const ppl: number[] = [];
    const replies = await each(
      [...strategy.configureEvaluate(round, ids)],
      ([id, instructions]) => endpoints[id].evaluate(round, instructions.parameters),
    );
    for (const [id, { step, losses }] of replies.entries()) {
      for (const [k, loss] of losses.entries()) {
        await record({ round, step, client: testIds[id][k], split: "test", loss });
        ppl.push(Math.exp(loss));
      }
    }
    return ppl.reduce((a, b) => a + b, 0) / ppl.length;
  };

  let round = startRound;
  if (round === 0) await evaluate(0);
  const stopAt = Math.min(options.rounds, hooks.stopAfterRound ?? Infinity);
  const total = options.rounds * steps * endpoints.length;
  let done = round * steps * endpoints.length, tokens = 0, seconds = 0;
  progress.total = total;
  progress.begin(done);
  while (round < stopAt) {
    round++;
    const replies = await each([...strategy.configureFit(round, ids)], ([id, instructions]) => {
      const endpoint = endpoints[id];
      return endpoint.fit(round, steps, instructions.parameters, (step) => {
        done++;
        tokens += step.tokens;
        seconds += step.seconds;
        progress.update({
          step: done,
          context: `round ${round}/${options.rounds} client ${id} (${endpoint.name})`,
          tokensPerSecond: tokens / seconds,
          loss: step.loss,
        });
      });
    });
    for (const [id, reply] of replies.entries()) {
      await record({ round, step: reply.step, client: id, split: "train", loss: reply.meanLoss });
    }
    strategy.aggregateFit(round, replies.map((r) => r.result));
    // Runs from before --eval-every evaluated every round.
    const evaluated = round % (options.evalEvery ?? 1) === 0 || round === options.rounds;
    const meanPpl = evaluated ? await evaluate(round) : undefined;
    await hooks.roundDone(round);
    if (meanPpl !== undefined && round < options.rounds) {
      progress.log(`round ${round}: mean test perplexity ${meanPpl.toFixed(2)}`);
    }
  }
  progress.done();
  if (total === 0) progress.log("no training steps");
  return round;
}

/** Each category's last recorded test perplexity: a finished run's result. */
export function finalTestPpl(metrics: readonly MetricRecord[], categories: number): number[] {
  return Array.from(
    { length: categories },
    (_, id) => metrics.findLast((m) => m.split === "test" && m.client === id)!.ppl,
  );
}

/** summary.json of a finished run. */
export function summarise(
  options: TrainOptions,
  clients: readonly { name: string; trainTokens: number }[],
  testPpl: readonly number[],
  pretrainedPpl: readonly number[],
): Summary {
  const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const spec = METHOD_SPECS[options.method];
  return {
    method: options.method,
    scenario: options.scenario,
    ood: options.ood,
    seed: options.seed,
    base_model: options.model,
    clients: clients.map((c, id) => ({
      id,
      name: c.name,
      n_experts: spec.frozen ? 0 : options.experts[spec.pooled ? 0 : id],
      train_tokens: c.trainTokens,
      test_ppl: testPpl[id],
    })),
    mean_test_ppl: mean(testPpl),
    pretrained_mean_test_ppl: mean(pretrainedPpl),
  };
}

/** The first `cap` tokens of a training stream (low-data clients), checked to hold a window. */
function capTrain(stream: Uint32Array, cap: number | null, id: number, T: number): Uint32Array {
  const kept = cap === null ? stream : stream.subarray(0, cap);
  if (kept.length < T + 1) {
    throw new RangeError(
      `client ${id} keeps ${kept.length} training tokens, fewer than one window of --seq ${T} ` +
        `+ 1; raise --train-tokens`,
    );
  }
  return kept;
}

function pool(categories: readonly Streams[]): Streams {
  const concat = (parts: Uint32Array[]) => {
    const out = new Uint32Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  };
  return {
    name: "pooled",
    train: concat(categories.map((c) => c.train)),
    val: concat(categories.map((c) => c.val)),
    test: concat(categories.map((c) => c.test)),
  };
}
