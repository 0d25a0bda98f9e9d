// A Flower node's run options: the run's own (method, rounds, schedule, LoRA, aggregation…) come
// from the ServerApp in every message's ConfigRecord, under the flag names of `deno task train`;
// the node's own (its base model, its data, its experts, its training-token cap, its folder)
// from where it runs. Together they are one TrainOptions, checked by resolveTrainOptions, so the
// node's client is built exactly as the simulation builds client `client`.
import { MAX_EXPERTS } from "../../model/adapters.ts";
import { checkChoice, checkInteger, OptionError } from "../../model/option_error.ts";
import { METHOD_SPECS, METHODS } from "../methods.ts";
import {
  loraTargetsList,
  resolveTrainOptions,
  TRAIN_DEFAULTS,
  type TrainOptions,
  type TrainOptionsInput,
} from "../options.ts";
import { maxClients, type Scenario, SCENARIOS } from "../scenarios.ts";
import type { ConfigValue } from "./record_values.ts";

/** What the node decides itself. */
export interface NodeLocalOptions {
  /** Its client id: its category of the scenario (and its seed stream, as in the simulation). */
  client: number;
  /** Its folder: config.json, its state, its adapters. */
  out: string;
  model?: string;
  scenario?: Scenario;
  /** The scenario's number of clients (it decides iid's dealing; default: train's). */
  clients?: number;
  ood?: boolean;
  /** This node's experts E (comigs-1gxs; default: the method's for this client id). */
  experts?: number;
  /** Training tokens this node keeps (default: its whole split). */
  trainTokens?: number;
}

/** names: comma-separated text, "" for the option's default (a run config holds no null). */
type Kind = "integer" | "real" | "boolean" | "text" | "names";

/** The ServerApp's run-config keys a node reads (train's flags) → the option each sets. */
export const SERVER_OPTIONS = {
  method: ["method", "text"],
  rounds: ["rounds", "integer"],
  "local-steps": ["localSteps", "integer"],
  "eval-every": ["evalEvery", "integer"],
  "router-every": ["routerEvery", "integer"],
  "router-steps": ["routerSteps", "integer"],
  "router-on-train": ["routerOnTrain", "boolean"],
  lr: ["lr", "real"],
  batch: ["batch", "integer"],
  seq: ["seq", "integer"],
  seed: ["seed", "integer"],
  rank: ["rank", "integer"],
  alpha: ["alpha", "real"],
  "lora-scaling": ["scaling", "text"],
  "top-k": ["topK", "integer"],
  "lb-coef": ["lbCoef", "real"],
  "lb-rho": ["lbRho", "real"],
  "lora-targets": ["loraTargets", "names"],
  aggregation: ["aggregation", "text"],
  dp: ["dp", "text"],
  "dp-clip": ["dpClip", "real"],
  "dp-noise": ["dpNoise", "real"],
  "dp-delta": ["dpDelta", "real"],
  "dp-seed": ["dpSeed", "integer"],
} as const satisfies Record<string, readonly [keyof TrainOptions, Kind]>;

/** The methods a Flower federation runs: FedAvg over shared tensors (the ServerApp's strategy). */
export const FLOWER_METHODS = METHODS.filter((m) => {
  const spec = METHOD_SPECS[m];
  return !spec.personal && !spec.pooled && !spec.frozen && spec.shares !== "none";
});

/** The ServerApp sent run options a node cannot take (named by their run-config key). */
export class RunConfigError extends Error {
  constructor(message: string) {
    super(`the ServerApp's run config: ${message}`);
    this.name = "RunConfigError";
  }
}

/**
 * The node's TrainOptions from a message's config and its own options. A bad run-config value is
 * a RunConfigError naming its key; a bad local option an OptionError (the CLI names its flag).
 */
export function nodeTrainOptions(
  config: Record<string, ConfigValue>,
  local: NodeLocalOptions,
): TrainOptions {
  const input: Record<string, unknown> = {};
  for (const [key, [option, kind]] of Object.entries(SERVER_OPTIONS)) {
    const value = config[key];
    if (value === undefined) {
      throw new RunConfigError(`"${key}" is missing (the comigs ServerApp sends every option)`);
    }
    const ok = kind === "boolean"
      ? typeof value === "boolean"
      : kind === "text" || kind === "names"
      ? typeof value === "string"
      : typeof value === "number";
    if (!ok) {
      const what = kind === "names" ? "text" : kind;
      throw new RunConfigError(`"${key}" is ${JSON.stringify(String(value))}, not ${what}`);
    }
    input[option] = kind !== "names"
      ? value
      : value === ""
      ? null
      : loraTargetsList(value as string);
  }
  // A run config holds no null: dp-seed -1 is train's absent --dp-seed (a secret noise key).
  if (input.dpSeed === -1) input.dpSeed = null;
  const method = input.method as string;
  if (!(FLOWER_METHODS as readonly string[]).includes(method)) {
    throw new RunConfigError(
      `"method" is "${method}"; a Flower federation (FedAvg over the shared tensors) runs ` +
        FLOWER_METHODS.join(", "),
    );
  }
  const given = input as TrainOptionsInput;
  const { client, experts, trainTokens } = local;
  return asRunConfigError(() => {
    // Defaults of the other clients' entries: only this client's are ever used.
    const defaults = resolveTrainOptions({
      ...given,
      scenario: local.scenario,
      clients: local.clients,
    });
    if (!Number.isInteger(client) || client < 0 || client >= defaults.clients) {
      throw new OptionError(
        "client",
        `must be a client id of the scenario, 0..${defaults.clients - 1}, got ${client}`,
      );
    }
    return resolveTrainOptions({
      ...given,
      scenario: local.scenario,
      clients: local.clients,
      ood: local.ood,
      model: local.model,
      out: local.out,
      experts: experts === undefined ? undefined : defaults.experts.with(client, experts),
      trainTokens: trainTokens === undefined
        ? undefined
        : defaults.trainTokens.with(client, trainTokens),
    });
  });
}

/** `fn()`, with an OptionError about an option the ServerApp sets restated as a RunConfigError. */
function asRunConfigError<T>(fn: () => T): T {
  const keyOf = new Map<string, string>(
    Object.entries(SERVER_OPTIONS).map(([key, [option]]) => [option, key]),
  );
  try {
    return fn();
  } catch (e) {
    if (!(e instanceof OptionError) || !keyOf.has(e.option)) throw e;
    throw new RunConfigError(e.restate((o) => keyOf.has(o) ? `"${keyOf.get(o)}"` : o));
  }
}

/** Checks what a node decides itself, before it joins (the rest needs the run's options). */
export function checkNodeOptions(local: NodeLocalOptions): void {
  checkInteger("client", local.client, 0);
  if (local.scenario !== undefined) checkChoice("scenario", local.scenario, SCENARIOS);
  if (local.clients !== undefined) {
    checkInteger(
      "clients",
      local.clients,
      1,
      maxClients(local.scenario ?? TRAIN_DEFAULTS.scenario),
    );
  }
  if (local.experts !== undefined) checkInteger("experts", local.experts, 1, MAX_EXPERTS);
  if (local.trainTokens !== undefined) checkInteger("trainTokens", local.trainTokens, 2);
  if (local.out === "") throw new OptionError("out", "must name the node's folder");
}
