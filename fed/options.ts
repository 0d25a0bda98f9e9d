// A run's options (config.json holds exactly these, every one resolved), their defaults
// (method.md §6: the default run finishes in about ten minutes on a 2-core machine without a
// GPU; the paper's values are reachable) and their checks. Errors name the option
// (OptionError); the CLI says the same with its flag.
import { MAX_EXPERTS } from "../model/adapters.ts";
import type { GPT2Config } from "../model/config.ts";
import { checkChoice, checkInteger, checkReal, OptionError } from "../model/option_error.ts";
import { type Weighting, WEIGHTINGS } from "./aggregate.ts";
import { type Method, METHOD_SPECS, METHODS } from "./methods.ts";
import { maxClients, type Scenario, SCENARIOS } from "./scenarios.ts";

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

/** The options a caller may leave out. `experts`, `trainTokens` may list one value for all. */
export type TrainOptionsInput = Partial<TrainOptions>;

/** method.md §6's shipped defaults (experts, trainTokens and out depend on other options). */
export const TRAIN_DEFAULTS = {
  method: "comigs-1g1s",
  scenario: "topics",
  clients: 4,
  model: "models/base",
  rounds: 10,
  localSteps: 10,
  evalEvery: 1,
  routerEvery: 10,
  routerSteps: 2,
  routerOnTrain: false,
  ood: false,
  lr: 2e-3,
  batch: 8,
  seq: 128,
  seed: 0,
  rank: 8,
  alpha: 16,
  scaling: "rslora",
  topK: 2,
  lbCoef: 0.01,
  lbRho: 0.5,
  aggregation: "uniform",
} as const satisfies Omit<TrainOptions, "experts" | "trainTokens" | "out">;

/** The paper's values of the options our defaults shrink (method.md's brackets). */
export const PAPER_VALUES: Partial<Record<keyof TrainOptions, number>> = {
  rounds: 20,
  localSteps: 10,
  routerEvery: 30,
  routerSteps: 10,
  lr: 2e-3,
  batch: 64,
  seq: 128,
};

/**
 * A run's options from what the caller gave, every other one from TRAIN_DEFAULTS, all checked
 * (OptionError names the first bad one). Nothing is read or created.
 */
export function resolveTrainOptions(given: TrainOptionsInput, now = new Date()): TrainOptions {
  const value = <K extends keyof typeof TRAIN_DEFAULTS>(key: K) =>
    (given[key] ?? TRAIN_DEFAULTS[key]) as TrainOptions[K];
  const method = value("method");
  checkChoice("method", method, METHODS);
  const scenario = value("scenario");
  checkChoice("scenario", scenario, SCENARIOS);
  const clients = value("clients");
  checkInteger("clients", clients, 1, maxClients(scenario));
  const seed = value("seed");
  checkInteger("seed", seed, 0, 2 ** 32 - 1);
  const aggregation = value("aggregation");
  checkChoice("aggregation", aggregation, WEIGHTINGS);
  if (METHOD_SPECS[method].personal && aggregation !== "uniform") {
    throw new OptionError(
      "aggregation",
      `weighs the server's average; {method} ${method} has none (each client weighs the ` +
        `others by their validation perplexity)`,
    );
  }
  const options: TrainOptions = {
    method,
    scenario,
    clients,
    experts: resolveExperts(given.experts, method, clients),
    trainTokens: resolveTrainTokens(given.trainTokens, clients),
    model: value("model"),
    rounds: value("rounds"),
    localSteps: value("localSteps"),
    evalEvery: value("evalEvery"),
    routerEvery: value("routerEvery"),
    routerSteps: value("routerSteps"),
    routerOnTrain: value("routerOnTrain"),
    ood: value("ood"),
    lr: value("lr"),
    batch: value("batch"),
    seq: value("seq"),
    seed,
    rank: value("rank"),
    alpha: value("alpha"),
    scaling: value("scaling"),
    topK: value("topK"),
    lbCoef: value("lbCoef"),
    lbRho: value("lbRho"),
    aggregation,
    out: given.out ?? `runs/${method}-${scenario}-s${seed}-${timestamp(now)}`,
  };
  checkInteger("rounds", options.rounds, 1, 100_000);
  checkInteger("localSteps", options.localSteps, 1, 1_000_000);
  checkInteger("evalEvery", options.evalEvery, 1, 100_000);
  checkInteger("routerEvery", options.routerEvery, 1, 2 ** 32 - 1);
  checkInteger("routerSteps", options.routerSteps, 0, 1_000_000);
  checkReal("lr", options.lr, (x) => x > 0 && x < 10, "in (0, 10)");
  checkInteger("batch", options.batch, 1, 4096);
  checkInteger("seq", options.seq, 1, 1_000_000);
  checkInteger("rank", options.rank, 1, 1024);
  checkReal("alpha", options.alpha, (x) => x > 0, "> 0");
  checkChoice("scaling", options.scaling, ["rslora", "standard"] as const);
  checkInteger("topK", options.topK, 1, MAX_EXPERTS);
  // k is clipped to each client's E (method.md §1); a k no client can use is a mistake.
  const mostExperts = Math.max(...options.experts);
  if (given.topK !== undefined && options.topK > mostExperts) {
    throw new OptionError(
      "topK",
      `${options.topK} exceeds the experts a client holds (at most ${mostExperts}); a token ` +
        `goes to at most every expert: choose 1..${mostExperts}`,
    );
  }
  checkReal("lbCoef", options.lbCoef, (x) => x >= 0, "≥ 0");
  checkReal("lbRho", options.lbRho, (x) => x > 0 && x < 1, "in (0, 1)");
  if (options.model === "") throw new OptionError("model", "must name a base model folder");
  if (options.out === "") throw new OptionError("out", "must name a run folder");
  return options;
}

/** Checks `options` against the base model they will train (before anything is created). */
export function checkAgainstBase(options: TrainOptions, base: GPT2Config): void {
  if (options.seq > base.n_positions) {
    throw new OptionError(
      "seq",
      `${options.seq} exceeds the context of the base model ({model} ${options.model}): ` +
        `${base.n_positions} tokens`,
    );
  }
}

/** E_i per client: the list given (comigs-1gxs), or 2 everywhere. */
function resolveExperts(given: number[] | undefined, method: Method, clients: number): number[] {
  const heterogeneous = METHOD_SPECS[method].heterogeneous;
  if (given === undefined) {
    // comigs-1gxs's default: the first half of the clients hold 2 experts, the rest 4.
    return Array.from({ length: clients }, (_, i) => heterogeneous && i >= clients / 2 ? 4 : 2);
  }
  const list = given.join(",");
  if (given.some((E) => !Number.isInteger(E) || E < 1 || E > MAX_EXPERTS)) {
    throw new OptionError(
      "experts",
      `[${list}]: each count must be an integer in 1..${MAX_EXPERTS}`,
    );
  }
  if (given.length !== clients && given.length !== 1) {
    throw new OptionError(
      "experts",
      `[${list}] lists ${given.length} counts for ${clients} clients (give one per client, or ` +
        `one for all)`,
    );
  }
  const perClient = given.length === 1 ? new Array(clients).fill(given[0]) : [...given];
  if (!heterogeneous && perClient.some((E) => E !== 2)) {
    throw new OptionError(
      "experts",
      `[${list}]: {method} ${method} holds 2 experts per client; for other or per-client ` +
        `counts use {method} comigs-1gxs`,
    );
  }
  return perClient;
}

/** The training-token cap per client (null: the whole split), from one cap or one per client. */
function resolveTrainTokens(
  given: (number | null)[] | undefined,
  clients: number,
): (number | null)[] {
  if (given === undefined) return new Array(clients).fill(null);
  const list = given.map((n) => n ?? "all").join(",");
  if (given.some((n) => n !== null && !(Number.isInteger(n) && n >= 2))) {
    throw new OptionError("trainTokens", `[${list}]: each entry must be an integer ≥ 2 or "all"`);
  }
  if (given.length !== clients && given.length !== 1) {
    throw new OptionError(
      "trainTokens",
      `[${list}] lists ${given.length} entries for ${clients} clients (give one per client, or ` +
        `one for all)`,
    );
  }
  return given.length === 1 ? new Array(clients).fill(given[0]) : [...given];
}

function timestamp(d: Date): string {
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-` +
    `${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}
