// One federated training run, simulated in one process (method.md §3): the server (a Strategy)
// and the clients exchange encoded messages only. Per round every client pulls the shared
// tensors, takes T expert steps (with its router phases) and sends back what its method shares;
// the server averages; every client's test split is evaluated before any training and after every
// round. After each round the whole state goes into one file written atomically, so a run killed
// at any moment resumes from its last completed round and ends exactly as an uninterrupted one.
//
// Outputs (interfaces.md "Training runs"): config.json, metrics.jsonl, summary.json,
// clients/<id>/adapters.safetensors, global.safetensors; plus resume.safetensors (the state).
import { join } from "node:path";
import type { Engine } from "../engine/device.ts";
import type { AdamWState } from "../engine/optim.ts";
import { adapterRole, adapterShapes, initAdapters, saveAdapters } from "../model/adapters.ts";
import { loadBaseCheckpoint } from "../model/checkpoint.ts";
import { StreamEvaluator } from "../model/evaluate.ts";
import { GPT2 } from "../model/gpt2.ts";
import { tokenStream } from "../model/pretrain_data.ts";
import {
  type NamedTensor,
  readSafetensors,
  writeFileAtomic,
  writeSafetensors,
} from "../model/safetensors.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import type { ProgressBar } from "../cli/progress.ts";
import type { Weighting } from "./aggregate.ts";
import { Client, type ClientState, mix } from "./client.ts";
import {
  isShared,
  type Method,
  METHOD_SPECS,
  methodAdapterConfig,
  methodInitAdapters,
} from "./methods.ts";
import { type ClientCorpus, loadScenario, type Scenario } from "./scenarios.ts";
import { FedAvgStrategy } from "./strategy.ts";

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

/** A category's data as token streams. */
interface Streams {
  name: string;
  train: Uint32Array;
  val: Uint32Array;
  test: Uint32Array;
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
  const { out, batch: B, seq: T } = options;
  const spec = METHOD_SPECS[options.method];
  const progress = hooks.progress;
  await Deno.mkdir(out, { recursive: true });
  if (!("resume" in start)) await writeJson(join(out, "config.json"), options);

  const { config, weights } = await loadBaseCheckpoint(options.model);
  if (T > config.n_positions) {
    throw new RangeError(`--seq ${T} exceeds the model's context of ${config.n_positions} tokens`);
  }
  const tokenizer = await loadTokenizer(options.model, config.vocab_size);
  const corpora = hooks.corpora ?? await loadScenario(options.scenario, {
    clients: options.clients,
    ood: options.ood,
    seed: options.seed,
  });
  const categories: Streams[] = corpora.map((c, id) => ({
    name: c.name,
    // Runs from before --train-tokens have no caps in their config.json.
    train: capTrain(tokenStream(tokenizer, c.train), options.trainTokens?.[id] ?? null, id, T),
    val: tokenStream(tokenizer, c.val),
    test: tokenStream(tokenizer, c.test),
  }));
  progress.log(
    `${options.method} on ${options.scenario}${options.ood ? " (out of distribution)" : ""}: ` +
      categories.map((c) => `${c.name} ${c.train.length}/${c.val.length}/${c.test.length}`)
        .join(", ") +
      " train/val/test tokens",
  );
  const model = new GPT2(engine, config, weights);
  const runStart = performance.now();
  const elapsed = () => (saved?.run.elapsedS ?? 0) + (performance.now() - runStart) / 1000;
  const metrics = saved ? (await readMetrics(out)).filter((m) => m.round <= saved.run.round) : [];
  const record = async (m: Omit<MetricRecord, "ppl" | "wall_s">) => {
    metrics.push({ ...m, ppl: Math.exp(m.loss), wall_s: Math.round(elapsed() * 10) / 10 });
    await writeFileAtomic(
      join(out, METRICS_FILE),
      new TextEncoder().encode(metrics.map((r) => JSON.stringify(r) + "\n").join("")),
    );
  };

  // The frozen base on every category's test split: the comparison column (and the whole run
  // for `pretrained`).
  const pretrainedPpl = saved?.run.pretrainedPpl ?? [];
  if (!saved) {
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
    const summary = summarise(options, categories, pretrainedPpl, pretrainedPpl);
    await writeJson(join(out, "summary.json"), summary);
    model.dispose();
    return { summary, pretrainedPpl };
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
  const strategy = new FedAvgStrategy(initial, spec.shares !== "none", options.aggregation);
  const evaluators = clients.map((client) =>
    (pooled ? categories : [categories[client.id]]).map((c) => client.evaluator(c.test))
  );
  const evaluate = async (round: number) => {
    for (const [id, instructions] of strategy.configureEvaluate(round, ids)) {
      await clients[id].receive(instructions.parameters);
    }
    for (const client of clients) {
      for (const [k, evaluator] of evaluators[client.id].entries()) {
        const loss = await evaluator.meanLoss();
        const id = pooled ? k : client.id;
        await record({ round, step: client.step, client: id, split: "test", loss });
      }
    }
  };

  let round = saved?.run.round ?? 0;
  if (saved) {
    strategy.restore(saved.global);
    clients.forEach((c, i) => c.importState(saved.clients[i]));
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
    if (evaluated) await evaluate(round);
    await saveRunState(
      out,
      {
        options,
        round,
        elapsedS: elapsed(),
        pretrainedPpl,
      },
      await Promise.all(clients.map((c) => c.exportState())),
      strategy.parameters(),
    );
    if (evaluated && round < options.rounds) {
      progress.log(
        `round ${round}: mean test perplexity ${meanTestPpl(metrics, round).toFixed(2)}`,
      );
    }
  }
  progress.done();
  if (total === 0) progress.log("no training steps");

  let summary: Summary | undefined;
  if (round === options.rounds) {
    for (const client of clients) {
      const dir = join(out, "clients", String(client.id));
      await Deno.mkdir(dir, { recursive: true });
      await saveAdapters(join(dir, "adapters.safetensors"), config, {
        config: client.adapters.config,
        values: await client.adapters.values(),
      });
    }
    const global = strategy.parameters();
    if (global && spec.shares !== "none") {
      await writeSafetensors(join(out, "global.safetensors"), global);
    }
    const finalPpl = categories.map((_, id) =>
      metrics.findLast((m) => m.split === "test" && m.client === id)!.ppl
    );
    summary = summarise(options, categories, finalPpl, pretrainedPpl);
    await writeJson(join(out, "summary.json"), summary);
  }
  for (const list of evaluators) for (const e of list) e.dispose();
  for (const client of clients) client.dispose();
  model.dispose();
  if (!summary) throw new RunStopped(round);
  return { summary, pretrainedPpl };
}

/** Thrown when `stopAfterRound` ended a run early (tests of resuming). */
export class RunStopped extends Error {
  constructor(readonly round: number) {
    super(`stopped after round ${round}`);
  }
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

function meanTestPpl(metrics: readonly MetricRecord[], round: number): number {
  const rows = metrics.filter((m) => m.round === round && m.split === "test");
  return rows.reduce((sum, m) => sum + m.ppl, 0) / rows.length;
}

function summarise(
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

async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFileAtomic(path, new TextEncoder().encode(JSON.stringify(value, null, 2) + "\n"));
}

/** The records of a metrics.jsonl text, one JSON object per non-empty line. */
export function parseMetrics(text: string): MetricRecord[] {
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as MetricRecord);
}

async function readMetrics(out: string): Promise<MetricRecord[]> {
  return parseMetrics(await Deno.readTextFile(join(out, METRICS_FILE)).catch(() => ""));
}

async function saveRunState(
  out: string,
  run: Omit<SavedRun, "clients">,
  clients: readonly ClientState[],
  global: Map<string, NamedTensor> | null,
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
  const saved: SavedRun = { ...run, clients: counters };
  await writeSafetensors(join(out, RESUME_FILE), tensors, { run: JSON.stringify(saved) });
}

async function readJsonOptions(dir: string): Promise<TrainOptions> {
  const path = join(dir, "config.json");
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
  const path = join(dir, RESUME_FILE);
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
