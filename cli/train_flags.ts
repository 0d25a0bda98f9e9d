// The flags of a training run, shared by every entry point that starts one (`deno task train`,
// `serve`, `browser`; `compare` forwards some): each sets one option of fed/options.ts, whose
// defaults and checks apply (errors name the flag here).
import { METHOD_SPECS, METHODS } from "../fed/methods.ts";
import {
  loraTargetsList,
  PAPER_VALUES,
  resolveTrainOptions,
  TRAIN_DEFAULTS,
  type TrainOptions,
  type TrainOptionsInput,
} from "../fed/options.ts";
import { maxClients, SCENARIOS } from "../fed/scenarios.ts";
import { AGGREGATIONS } from "../fed/aggregate.ts";
import { type Flags, type FlagSpec, numberFlag, optionOf, UsageError, withFlags } from "./args.ts";

const D = TRAIN_DEFAULTS;
/** "(default X; paper Y)" for the help of the flag setting `option`. */
const defaults = (option: keyof typeof D) => {
  const paper = PAPER_VALUES[option];
  return `(default ${D[option]}${paper === undefined ? "" : `; paper ${paper}`})`;
};

export const TRAIN_FLAGS: FlagSpec = {
  method: { type: "string", help: `${METHODS.join(" | ")} ${defaults("method")}` },
  scenario: { type: "string", help: `${SCENARIOS.join(" | ")} ${defaults("scenario")}` },
  clients: {
    type: "string",
    help: `number of clients: 1..${maxClients("topics")} for the named scenarios, ` +
      `1..${maxClients("iid")} for iid ${defaults("clients")}`,
  },
  experts: {
    type: "string",
    help: "experts per client, e.g. 2,2,4,4 (comigs-1gxs only; default 2,2,4,4; others use 2)",
  },
  "train-tokens": {
    type: "string",
    help: "training tokens kept per client: one cap for all or one per client, e.g. " +
      "20000,all,all,all (default all: the whole split)",
  },
  model: {
    type: "string",
    help: `base model: a folder, or hf:ORG/NAME[@REVISION] from the Hugging Face Hub ${
      defaults("model")
    }`,
  },
  rounds: { type: "string", help: `communication rounds R ${defaults("rounds")}` },
  "local-steps": {
    type: "string",
    help: `expert steps per client per round T ${defaults("localSteps")}`,
  },
  "eval-every": {
    type: "string",
    help: `evaluate the test split every N rounds and at the end ${defaults("evalEvery")}`,
  },
  "router-every": {
    type: "string",
    help: `router phase every P expert steps ${defaults("routerEvery")}`,
  },
  "router-steps": { type: "string", help: `router steps per phase Q ${defaults("routerSteps")}` },
  "router-on-train": { type: "boolean", help: "draw router batches from the training split" },
  ood: { type: "boolean", help: "validation and test are a uniform mix of all categories" },
  lr: { type: "string", help: `learning rate ${defaults("lr")}` },
  batch: { type: "string", help: `sequences per step ${defaults("batch")}` },
  seq: { type: "string", help: `tokens per sequence ${defaults("seq")}` },
  seed: { type: "string", help: `seed of init and batches ${defaults("seed")}` },
  rank: { type: "string", help: `LoRA rank r ${defaults("rank")}` },
  alpha: { type: "string", help: `LoRA alpha ${defaults("alpha")}` },
  "lora-scaling": {
    type: "string",
    help: "rslora (alpha/√r, default) | standard (alpha/r)",
    option: "scaling",
  },
  "top-k": { type: "string", help: `experts per token k ${defaults("topK")}` },
  "lb-coef": { type: "string", help: `load-balancing weight λ ${defaults("lbCoef")}` },
  "lb-rho": { type: "string", help: `generalist importance ρ ${defaults("lbRho")}` },
  "lora-targets": {
    type: "string",
    help: "Llama-family bases: the attention projections with LoRA, a non-empty subset of " +
      "q,k,v,o, e.g. q,v (default all four; GPT-2's are always c_attn and c_proj)",
  },
  aggregation: {
    type: "string",
    help: `${AGGREGATIONS.join(" | ")}: the server's mean (plain, or weighted by the claimed ` +
      `training tokens, each capped at the round's upper median claim), or a robust ` +
      `coordinate-wise median or trimmed mean ${defaults("aggregation")}`,
  },
  trim: { type: "string", help: `trimmed-mean: fraction cut from each side ${defaults("trim")}` },
  "max-update-norm": {
    type: "string",
    help: "refuse an update (client tensors − the global it started from) of a larger L2 norm " +
      "(default: 2·lr·local steps·√values, what an honest client can reach)",
  },
  "min-clients": {
    type: "string",
    help: `fewer accepted updates keep the previous global ${defaults("minClients")}`,
  },
  "clients-per-round": {
    type: "string",
    help: "clients drawn to train each round, from the seed and the round (default all)",
  },
  dp: {
    type: "string",
    help: "differential privacy of the shared update: none (default) | central (the server " +
      "clips each update and noises the sum) | local (each client clips and noises its own)",
  },
  "dp-clip": {
    type: "string",
    help: `dp: clip each update to this L2 norm C ${defaults("dpClip")}`,
  },
  "dp-noise": {
    type: "string",
    help: `dp: noise multiplier z (standard deviation z·C) ${defaults("dpNoise")}`,
  },
  "dp-delta": { type: "string", help: `dp: δ of the (ε, δ) reported ${defaults("dpDelta")}` },
  "dp-seed": {
    type: "string",
    help: "dp: seed the noise, for reproducible experiments only (default: a secret key)",
  },
  out: { type: "string", help: "run folder (default runs/<method>-<scenario>-s<seed>-<time>)" },
  overwrite: {
    type: "boolean",
    help: "start again in --out although it holds a run (its run files are removed)",
  },
  resume: { type: "string", help: "continue the run in DIR (no other flag allowed)" },
  help: { type: "boolean", help: "show this help" },
};

/** Flags whose value is an integer, a real number, a boolean, or a comma-separated list. */
const INTEGER_FLAGS = [
  "clients",
  "rounds",
  "local-steps",
  "eval-every",
  "router-every",
  "router-steps",
  "batch",
  "seq",
  "seed",
  "rank",
  "top-k",
  "min-clients",
  "clients-per-round",
  "dp-seed",
];
const REAL_FLAGS = [
  "lr",
  "alpha",
  "lb-coef",
  "lb-rho",
  "trim",
  "max-update-norm",
  "dp-clip",
  "dp-noise",
  "dp-delta",
];
const BOOLEAN_FLAGS = ["router-on-train", "ood"];

export type TrainInvocation =
  | { help: true }
  | { resume: string }
  | { options: TrainOptions; overwrite: boolean };

/** Help, a resume (no other flag allowed), or new options, from parsed train flags. */
export function trainInvocation(flags: Flags, now = new Date()): TrainInvocation {
  if (flags.help) return { help: true };
  const given = Object.keys(flags).filter((f) => flags[f] !== undefined && f !== "resume");
  if (typeof flags.resume === "string") {
    if (given.length) {
      throw new UsageError(
        `--resume takes every option from the run's config.json; remove --${given.join(", --")}`,
      );
    }
    return { resume: flags.resume };
  }
  return { options: trainOptionsFromFlags(flags, now), overwrite: flags.overwrite === true };
}

/** A run's options from parsed train flags (defaults for those not given), checked. */
export function trainOptionsFromFlags(flags: Flags, now = new Date()): TrainOptions {
  const input: Record<string, unknown> = {};
  for (const flag of Object.keys(TRAIN_FLAGS)) {
    const value = flags[flag];
    if (value === undefined || ["help", "resume", "overwrite"].includes(flag)) continue;
    const option = optionOf(TRAIN_FLAGS, flag);
    if (INTEGER_FLAGS.includes(flag)) input[option] = numberFlag(flags, flag, "integer");
    else if (REAL_FLAGS.includes(flag)) input[option] = numberFlag(flags, flag);
    else if (BOOLEAN_FLAGS.includes(flag)) input[option] = value === true;
    else if (flag === "experts") input[option] = listFlag(flag, value as string, false);
    else if (flag === "train-tokens") input[option] = listFlag(flag, value as string, true);
    else if (flag === "lora-targets") input[option] = loraTargetsList(value as string);
    else input[option] = value;
  }
  return withFlags(TRAIN_FLAGS, () => resolveTrainOptions(input as TrainOptionsInput, now));
}

/** "2,2,4,4" → numbers; with `all`, "5000,all" → [5000, null]. */
function listFlag(flag: string, text: string, all: boolean): (number | null)[] {
  return text.split(",").map((part) => {
    const entry = part.trim();
    if (all && entry === "all") return null;
    const value = entry === "" ? NaN : Number(entry);
    if (!Number.isFinite(value)) {
      throw new UsageError(
        `--${flag} "${text}": each entry must be an integer${all ? ' ≥ 2 or "all"' : ""}`,
      );
    }
    return value;
  });
}

/** The methods and what each does, for --help. */
export function methodsHelp(): string {
  return `methods:\n${
    METHODS.map((m) => `  ${m.padEnd(12)} ${METHOD_SPECS[m].summary}`).join("\n")
  }`;
}
