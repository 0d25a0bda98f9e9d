// A run's options (config.json holds exactly these, every one resolved), their defaults
// (method.md §6: the default run finishes in about ten minutes on a 2-core machine without a
// GPU; the paper's values are reachable) and their checks. Errors name the option
// (OptionError); the CLI says the same with its flag.
import { MAX_EXPERTS } from "../model/adapters.ts";
import { LORA_TARGETS, type LoraTarget } from "../model/adapter_layout.ts";
import { type BaseConfig, dimsOf, isLlama } from "../model/base.ts";
import { checkChoice, checkInteger, checkReal, OptionError } from "../model/option_error.ts";
import { type Aggregation, AGGREGATIONS, DEFAULT_TRIM } from "./aggregate.ts";
import { DP_MODES, type DpMode } from "./privacy.ts";
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
  /** The attention projections with LoRA, of a Llama-family base (in q, k, v, o order); null:
   * every one the base has (GPT-2: c_attn and c_proj; the Llama family: q, k, v and o). */
  loraTargets: LoraTarget[] | null;
  /** How the server combines the accepted updates (fed/aggregate.ts). */
  aggregation: Aggregation;
  /** trimmed-mean: the fraction cut from each side of every coordinate. */
  trim: number;
  /** The largest accepted L2 norm of a client's update; null: what an honest client can reach
   * (fed/validate_update.ts defaultMaxUpdateNorm). */
  maxUpdateNorm: number | null;
  /** Fewer accepted updates than this keep the previous global for the round. */
  minClients: number;
  /** Clients drawn to train each round (from the seed and the round); null: every client. */
  clientsPerRound: number | null;
  /** Differential privacy of the shared update: none, central (the server clips and noises the
   * sum) or local (each client clips and noises its own update). */
  dp: "none" | DpMode;
  /** C: every update is clipped to this L2 norm (dp). */
  dpClip: number;
  /** z: the noise's standard deviation is z·C (dp). */
  dpNoise: number;
  /** δ of the (ε, δ) guarantee reported (dp). */
  dpDelta: number;
  /** Seeds the DP noise for reproducible experiments (no privacy then); null: a secret key. */
  dpSeed: number | null;
  out: string;
}

/** The options a caller may leave out. `experts`, `trainTokens` may list one value for all;
 * `loraTargets` may write a projection short (q for q_proj) and in any order. */
export type TrainOptionsInput = Partial<Omit<TrainOptions, "loraTargets">> & {
  loraTargets?: readonly string[] | null;
};

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
  loraTargets: null,
  aggregation: "uniform",
  trim: DEFAULT_TRIM,
  maxUpdateNorm: null,
  minClients: 1,
  clientsPerRound: null,
  dp: "none",
  dpClip: 1,
  dpNoise: 1,
  dpDelta: 1e-5,
  dpSeed: null,
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
  checkChoice("aggregation", aggregation, AGGREGATIONS);
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
    loraTargets: resolveLoraTargets(given.loraTargets),
    aggregation,
    trim: value("trim"),
    maxUpdateNorm: value("maxUpdateNorm"),
    minClients: value("minClients"),
    clientsPerRound: value("clientsPerRound"),
    dp: value("dp"),
    dpClip: value("dpClip"),
    dpNoise: value("dpNoise"),
    dpDelta: value("dpDelta"),
    dpSeed: value("dpSeed"),
    out: given.out ?? `runs/${method}-${scenario}-s${seed}-${timestamp(now)}`,
  };
  checkRobustness(options);
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

/** The checks of the options that guard the federation: robust aggregation, sampling, DP. */
function checkRobustness(options: TrainOptions): void {
  const { clients, aggregation, dp } = options;
  checkReal("trim", options.trim, (x) => x >= 0 && x < 0.5, "in [0, 0.5)");
  if (options.maxUpdateNorm !== null) {
    checkReal("maxUpdateNorm", options.maxUpdateNorm, (x) => x > 0, "> 0");
  }
  checkInteger("minClients", options.minClients, 1, clients);
  if (options.clientsPerRound !== null) {
    checkInteger("clientsPerRound", options.clientsPerRound, 1, clients);
  }
  checkChoice("dp", dp, ["none", ...DP_MODES] as const);
  checkReal("dpClip", options.dpClip, (x) => x > 0, "> 0");
  checkReal("dpNoise", options.dpNoise, (x) => x > 0, "> 0 (z = 0 gives no privacy)");
  checkReal("dpDelta", options.dpDelta, (x) => x > 0 && x < 1, "in (0, 1), e.g. 1e-5");
  if (options.dpSeed !== null) checkInteger("dpSeed", options.dpSeed, 0, 2 ** 32 - 1);
  if (dp === "central" && aggregation !== "uniform") {
    throw new OptionError(
      "aggregation",
      `${aggregation} cannot be used with {dp} central: the noise is calibrated to a plain sum ` +
        `of clipped updates (use uniform)`,
    );
  }
  const spec = METHOD_SPECS[options.method];
  if (dp !== "none" && (spec.shares === "none" || spec.personal || spec.pooled || spec.frozen)) {
    throw new OptionError(
      "dp",
      `${dp} protects the averaged shared update; {method} ${options.method} has none`,
    );
  }
}

/**
 * The options of a run folder written by an older version, with every option added since at its
 * default (older runs behaved as those defaults do).
 */
export function withCurrentDefaults(saved: TrainOptions): TrainOptions {
  const filled: Record<string, unknown> = { ...saved };
  for (const [key, value] of Object.entries(TRAIN_DEFAULTS)) filled[key] ??= value;
  filled.trainTokens ??= new Array(saved.clients).fill(null);
  return filled as unknown as TrainOptions;
}

/** Checks `options` against the base model they will train (before anything is created). */
export function checkAgainstBase(options: TrainOptions, base: BaseConfig): void {
  const { context } = dimsOf(base);
  if (options.loraTargets !== null && !isLlama(base)) {
    throw new OptionError(
      "loraTargets",
      `chooses among the attention projections of a Llama-family base (q, k, v, o); the base ` +
        `model ({model} ${options.model}) is GPT-2, whose attention LoRA is always on c_attn ` +
        `and c_proj: leave {loraTargets} out`,
    );
  }
  if (options.seq > context) {
    throw new OptionError(
      "seq",
      `${options.seq} exceeds the context of the base model ({model} ${options.model}): ` +
        `${context} tokens`,
    );
  }
}

/** A comma-separated list of projections as written on a command line or in a run config
 * ("q,v" → ["q", "v"]; "" → [], which names none): resolveTrainOptions checks each name. */
export function loraTargetsList(text: string): string[] {
  return text === "" ? [] : text.split(",").map((part) => part.trim());
}

/** The adapted projections, each given as q or q_proj, in LORA_TARGETS' order (one run, one
 * layout, whatever order they were given in); null (not given): every one of the base. */
function resolveLoraTargets(given: readonly string[] | null | undefined): LoraTarget[] | null {
  if (given === undefined || given === null) return null;
  const choices = "a non-empty subset of q, k, v, o (the query, key, value and output " +
    "projections), comma-separated, e.g. q,v";
  if (given.length === 0) {
    throw new OptionError("loraTargets", `names no projection: give ${choices}`);
  }
  const targets = new Set<LoraTarget>();
  for (const text of given) {
    const target = LORA_TARGETS.find((t) => t === text || t === `${text}_proj`);
    if (target === undefined) {
      throw new OptionError(
        "loraTargets",
        `"${text}" is not an attention projection: give ${choices}`,
      );
    }
    if (targets.has(target)) {
      throw new OptionError("loraTargets", `names ${target} twice: give ${choices}`);
    }
    targets.add(target);
  }
  return LORA_TARGETS.filter((t) => targets.has(t));
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
