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
import { Client, type ClientState, mix } from "./client.ts";
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
    for (const c of categories) {
      const evaluator = new StreamEvaluator(
        engine,
        config,
        c.test,
        B,
        T,
        (tape, batch) => model.forward(tape, batch).tokenLosses,
      );
      pretrainedPpl.push(Math.exp(await evaluator.meanLoss()));
      evaluator.dispose();
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
  const { rank, alpha, scaling, topK, lbCoef, lbRho } = options;
  const adapterConfigs = members.map((_, id) =>
    methodAdapterConfig(
      spec,
      { rank, alpha, scaling, topK, lbCoef, lbRho },
      options.experts[id],
      config,
    )
  );
  // The pooled model takes every category's share of steps, so it trains on as many tokens as
  // the whole federation does.
  const steps = pooled ? options.localSteps * categories.length : options.localSteps;
  const schedule = {
    batch: B,
    seq: T,
    lr: options.lr,
    totalSteps: options.rounds * steps,
    routerEvery: options.routerEvery,
    routerSteps: options.routerSteps,
  };
  const clients = members.map((data, id) => {
    const init = methodInitAdapters(spec, config, adapterConfigs[id], mix(options.seed, id, 0));
    return new Client(
      engine,
      model,
      id,
      { name: data.name, train: data.train, router: options.routerOnTrain ? data.train : data.val },
      spec,
      adapterConfigs[id],
      init,
      schedule,
      options.seed,
    );
  });
  const ids = clients.map((c) => c.id);
  // The server's initial shared tensors: what every client starts from (method.md §2).
  const serverInit = initAdapters(config, adapterConfigs[0], options.seed);
  const initial = new Map<string, NamedTensor>();
  const syncSpec = {
    ...spec,
    shares: spec.shares === "all" ? "all" as const : "generalist" as const,
  };
  for (const [name, shape] of adapterShapes(config, adapterConfigs[0])) {
    if (isShared(syncSpec, adapterRole(name))) {
      initial.set(name, { shape, data: serverInit.get(name)! });
    }
  }
  const strategy = spec.personal
    ? new PclStrategy(initial)
    : new FedAvgStrategy(initial, spec.shares !== "none", options.aggregation);
  const evaluators = clients.map((client) =>
    (pooled ? categories : [categories[client.id]]).map((c) => client.evaluator(c.test))
  );
  const evaluate = async (round: number) => {
    for (const [id, instructions] of strategy.configureEvaluate(round, ids)) {
      await clients[id].receive(instructions.parameters);
    }
    const ppl: number[] = [];
    for (const client of clients) {
      for (const [k, evaluator] of evaluators[client.id].entries()) {
        const loss = await evaluator.meanLoss();
        const id = pooled ? k : client.id;
        await record({ round, step: client.step, client: id, split: "test", loss });
        ppl.push(Math.exp(loss));
      }
    }
    return ppl.reduce((a, b) => a + b, 0) / ppl.length;
  };

  let round = resume?.round ?? 0;
  if (resume) {
    strategy.restore(resume.global);
    clients.forEach((c, i) => c.importState(resume.clients[i]));
  } else await evaluate(0);

  const stopAt = Math.min(options.rounds, hooks.stopAfterRound ?? Infinity);
  const total = options.rounds * steps * clients.length;
  let done = round * steps * clients.length, tokens = 0, seconds = 0;
  progress.total = total;
  progress.begin(done);
  while (round < stopAt) {
    round++;
    const results: Uint8Array[] = [];
    for (const [id, instructions] of strategy.configureFit(round, ids)) {
      const client = clients[id];
      await client.receive(instructions.parameters);
      let lossSum = 0;
      results.push(
        await client.fit(round, steps, (step) => {
          done++;
          tokens += step.tokens;
          seconds += step.seconds;
          lossSum += step.loss;
          progress.update({
            step: done,
            context: `round ${round}/${options.rounds} client ${id} (${client.data.name})`,
            tokensPerSecond: tokens / seconds,
            loss: step.loss,
          });
        }),
      );
      await record({
        round,
        step: client.step,
        client: id,
        split: "train",
        loss: lossSum / steps,
      });
    }
    strategy.aggregateFit(round, results);
    // Runs from before --eval-every evaluated every round.
    const evaluated = round % (options.evalEvery ?? 1) === 0 || round === options.rounds;
    const meanPpl = evaluated ? await evaluate(round) : undefined;
    await hooks.roundDone?.({
      round,
      pretrainedPpl,
      clients: await Promise.all(clients.map((c) => c.exportState())),
      global: strategy.parameters(),
    });
    if (meanPpl !== undefined && round < options.rounds) {
      progress.log(`round ${round}: mean test perplexity ${meanPpl.toFixed(2)}`);
    }
  }
  progress.done();
  if (total === 0) progress.log("no training steps");

  const adapters = [];
  for (const client of clients) {
    adapters.push({ config: client.adapters.config, values: await client.adapters.values() });
  }
  // PCL has no global model: its bundle holds every client's tensors, so it stays on the server.
  const global = spec.shares !== "none" && !spec.personal ? strategy.parameters() : null;
  for (const list of evaluators) for (const e of list) e.dispose();
  for (const client of clients) client.dispose();
  model.dispose();
  return { round, pretrainedPpl, adapters, global };
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
  categories: readonly Streams[],
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
    clients: categories.map((c, id) => ({
      id,
      name: c.name,
      n_experts: spec.frozen ? 0 : options.experts[spec.pooled ? 0 : id],
      train_tokens: c.train.length,
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
