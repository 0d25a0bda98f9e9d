// `deno task train`: federated fine-tuning of the shipped base model with CoMiGS or a baseline
// (method.md §4) on a real-data scenario (fed/scenarios.ts). Defaults are method.md §6's: they
// finish in about ten minutes on a 2-core machine without a GPU; the paper's settings are flags.
import { Engine } from "../engine/device.ts";
import { MAX_EXPERTS } from "../model/adapters.ts";
import { markdownTable } from "../model/markdown_table.ts";
import { type Weighting, WEIGHTINGS } from "../fed/aggregate.ts";
import { type Method, METHOD_SPECS, METHODS } from "../fed/methods.ts";
import type { TrainOptions } from "../fed/federation.ts";
import { type RunResult, runTraining } from "../fed/run.ts";
import { type Scenario, SCENARIOS } from "../fed/scenarios.ts";
import { type FlagSpec, helpText, parseFlags, runMain, UsageError } from "./args.ts";
import { ProgressBar } from "./progress.ts";

/** method.md §6's shipped defaults (the paper's values in the help text). */
export const DEFAULTS = {
  method: "comigs-1g1s" as Method,
  scenario: "topics" as Scenario,
  clients: 4,
  model: "models/base",
  rounds: 10,
  localSteps: 10,
  evalEvery: 1,
  routerEvery: 10,
  routerSteps: 2,
  lr: 2e-3,
  batch: 8,
  seq: 128,
  seed: 0,
  rank: 8,
  alpha: 16,
  scaling: "rslora" as const,
  topK: 2,
  lbCoef: 0.01,
  lbRho: 0.5,
  aggregation: "uniform" as Weighting,
};

const USAGE = "deno task train [--method M] [--scenario S] ... | --resume DIR";
export const FLAGS: FlagSpec = {
  method: { type: "string", help: `${METHODS.join(" | ")} (default ${DEFAULTS.method})` },
  scenario: { type: "string", help: `${SCENARIOS.join(" | ")} (default ${DEFAULTS.scenario})` },
  clients: {
    type: "string",
    help: `number of clients: 1..4 for the named scenarios, 1..16 for iid (default 4)`,
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
  model: { type: "string", help: `base model folder (default ${DEFAULTS.model})` },
  rounds: { type: "string", help: `communication rounds R (default ${DEFAULTS.rounds}; paper 20)` },
  "local-steps": {
    type: "string",
    help: `expert steps per client per round T (default ${DEFAULTS.localSteps}; paper 10)`,
  },
  "eval-every": {
    type: "string",
    help: `evaluate the test split every N rounds (and at the end; default ${DEFAULTS.evalEvery})`,
  },
  "router-every": {
    type: "string",
    help: `router phase every P expert steps (default ${DEFAULTS.routerEvery}; paper 30)`,
  },
  "router-steps": {
    type: "string",
    help: `router steps per phase Q (default ${DEFAULTS.routerSteps}; paper 10)`,
  },
  "router-on-train": { type: "boolean", help: "draw router batches from the training split" },
  ood: { type: "boolean", help: "validation and test are a uniform mix of all categories" },
  lr: { type: "string", help: `learning rate (default ${DEFAULTS.lr}; paper 2e-3)` },
  batch: { type: "string", help: `sequences per step (default ${DEFAULTS.batch}; paper 64)` },
  seq: { type: "string", help: `tokens per sequence (default ${DEFAULTS.seq}; paper 128)` },
  seed: { type: "string", help: `seed of init and batches (default ${DEFAULTS.seed})` },
  rank: { type: "string", help: `LoRA rank r (default ${DEFAULTS.rank})` },
  alpha: { type: "string", help: `LoRA alpha (default ${DEFAULTS.alpha})` },
  "lora-scaling": { type: "string", help: "rslora (alpha/√r, default) | standard (alpha/r)" },
  "top-k": { type: "string", help: `experts per token k (default ${DEFAULTS.topK})` },
  "lb-coef": { type: "string", help: `load-balancing weight λ (default ${DEFAULTS.lbCoef})` },
  "lb-rho": { type: "string", help: `generalist importance ρ (default ${DEFAULTS.lbRho})` },
  aggregation: { type: "string", help: "uniform (default) | tokens (weighted by train tokens)" },
  out: { type: "string", help: "run folder (default runs/<method>-<scenario>-s<seed>-<time>)" },
  resume: { type: "string", help: "continue the run in DIR (no other flag allowed)" },
  help: { type: "boolean", help: "show this help" },
};

export type Invocation = { help: true } | { resume: string } | { options: TrainOptions };

export function parseInvocation(args: string[], now = new Date()): Invocation {
  return invocationFromFlags(parseFlags(args, FLAGS, USAGE), now);
}

/** Help, a resume (no other flag allowed), or new options, from parsed train flags (`deno task
 * serve` takes the same). */
export function invocationFromFlags(
  flags: Record<string, string | boolean | undefined>,
  now = new Date(),
): Invocation {
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
  return { options: optionsFromFlags(flags, now) };
}

/** A run's options from parsed train flags (defaults for those not given); `deno task browser`
 * takes the same flags. */
export function optionsFromFlags(
  flags: Record<string, string | boolean | undefined>,
  now = new Date(),
): TrainOptions {
  const text = (flag: string) => flags[flag] as string | undefined;
  const choice = <T extends string>(flag: string, allowed: readonly T[], fallback: T): T => {
    const value = text(flag) ?? fallback;
    if (!allowed.includes(value as T)) {
      throw new UsageError(`--${flag} "${value}" is not one of: ${allowed.join(", ")}`);
    }
    return value as T;
  };
  const integer = (flag: string, fallback: number, min: number, max = 2 ** 32 - 1): number => {
    const raw = text(flag);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < min || value > max) {
      throw new UsageError(`--${flag} must be an integer in ${min}..${max}, got "${raw}"`);
    }
    return value;
  };
  const real = (flag: string, fallback: number, ok: (x: number) => boolean, range: string) => {
    const raw = text(flag);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (raw.trim() === "" || !Number.isFinite(value) || !ok(value)) {
      throw new UsageError(`--${flag} must be a number ${range}, got "${raw}"`);
    }
    return value;
  };

  const method = choice("method", METHODS, DEFAULTS.method);
  const scenario = choice("scenario", SCENARIOS, DEFAULTS.scenario);
  const clients = integer("clients", DEFAULTS.clients, 1, scenario === "iid" ? 16 : 4);
  if (METHOD_SPECS[method].personal && (text("aggregation") ?? "uniform") !== "uniform") {
    throw new UsageError(
      `--aggregation weighs the server's average; --method ${method} has none (each client ` +
        `weighs the others by their validation perplexity)`,
    );
  }
  const seed = integer("seed", DEFAULTS.seed, 0);
  return {
    method,
    scenario,
    clients,
    experts: parseExperts(text("experts"), method, clients),
    trainTokens: parseTrainTokens(text("train-tokens"), clients),
    model: text("model") ?? DEFAULTS.model,
    rounds: integer("rounds", DEFAULTS.rounds, 1, 100_000),
    localSteps: integer("local-steps", DEFAULTS.localSteps, 1, 1_000_000),
    evalEvery: integer("eval-every", DEFAULTS.evalEvery, 1, 100_000),
    routerEvery: integer("router-every", DEFAULTS.routerEvery, 1),
    routerSteps: integer("router-steps", DEFAULTS.routerSteps, 0, 1_000_000),
    routerOnTrain: flags["router-on-train"] === true,
    ood: flags.ood === true,
    lr: real("lr", DEFAULTS.lr, (x) => x > 0 && x < 10, "in (0, 10)"),
    batch: integer("batch", DEFAULTS.batch, 1, 4096),
    seq: integer("seq", DEFAULTS.seq, 1, 1_000_000),
    seed,
    rank: integer("rank", DEFAULTS.rank, 1, 1024),
    alpha: real("alpha", DEFAULTS.alpha, (x) => x > 0, "> 0"),
    scaling: choice("lora-scaling", ["rslora", "standard"] as const, DEFAULTS.scaling),
    topK: integer("top-k", DEFAULTS.topK, 1, MAX_EXPERTS),
    lbCoef: real("lb-coef", DEFAULTS.lbCoef, (x) => x >= 0, "≥ 0"),
    lbRho: real("lb-rho", DEFAULTS.lbRho, (x) => x > 0 && x < 1, "in (0, 1)"),
    aggregation: choice("aggregation", WEIGHTINGS, DEFAULTS.aggregation),
    out: text("out") ?? `runs/${method}-${scenario}-s${seed}-${timestamp(now)}`,
  };
}

/** E_i per client: the list given (comigs-1gxs), or 2 everywhere. */
function parseExperts(raw: string | undefined, method: Method, clients: number): number[] {
  const heterogeneous = METHOD_SPECS[method].heterogeneous;
  if (raw === undefined) {
    // comigs-1gxs's default: the first half of the clients hold 2 experts, the rest 4.
    return Array.from({ length: clients }, (_, i) => heterogeneous && i >= clients / 2 ? 4 : 2);
  }
  const counts = raw.split(",").map((p) => Number(p.trim()));
  if (counts.some((E) => !Number.isInteger(E) || E < 1 || E > MAX_EXPERTS)) {
    throw new UsageError(`--experts "${raw}": each count must be an integer in 1..${MAX_EXPERTS}`);
  }
  if (counts.length !== clients && counts.length !== 1) {
    throw new UsageError(
      `--experts "${raw}" lists ${counts.length} counts for ${clients} clients (give one per ` +
        `client, or one for all)`,
    );
  }
  const perClient = counts.length === 1 ? new Array(clients).fill(counts[0]) : counts;
  if (!heterogeneous && perClient.some((E) => E !== 2)) {
    throw new UsageError(
      `--method ${method} holds 2 experts per client; for other or per-client counts use ` +
        `--method comigs-1gxs --experts ${raw}`,
    );
  }
  return perClient;
}

/** The training-token cap per client (null: the whole split), from "N" or "N,all,...". */
export function parseTrainTokens(raw: string | undefined, clients: number): (number | null)[] {
  if (raw === undefined) return new Array(clients).fill(null);
  const caps = raw.split(",").map((p) => p.trim()).map((p) => p === "all" ? null : Number(p));
  if (caps.some((n) => n !== null && !(Number.isInteger(n) && n >= 2))) {
    throw new UsageError(
      `--train-tokens "${raw}": each entry must be an integer ≥ 2 or "all"`,
    );
  }
  if (caps.length !== clients && caps.length !== 1) {
    throw new UsageError(
      `--train-tokens "${raw}" lists ${caps.length} entries for ${clients} clients (give one per ` +
        `client, or one for all)`,
    );
  }
  return caps.length === 1 ? new Array(clients).fill(caps[0]) : caps;
}

function timestamp(d: Date): string {
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-` +
    `${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}

/** The per-client table printed at the end (Markdown). */
export function summaryTable({ summary, pretrainedPpl }: RunResult): string {
  const rows: string[][] = [
    ["client", "name", "experts", "train tokens", "pretrained ppl", "test ppl"],
    ...summary.clients.map((c) => [
      String(c.id),
      c.name,
      String(c.n_experts),
      String(c.train_tokens),
      pretrainedPpl[c.id].toFixed(2),
      c.test_ppl.toFixed(2),
    ]),
    [
      "mean",
      "",
      "",
      "",
      summary.pretrained_mean_test_ppl.toFixed(2),
      summary.mean_test_ppl.toFixed(2),
    ],
  ];
  return markdownTable(rows, { pad: true, align: ["left", "left", ...new Array(4).fill("right")] });
}

async function main(): Promise<void> {
  const invocation = parseInvocation(Deno.args);
  if ("help" in invocation) {
    console.log(helpText(FLAGS, USAGE));
    console.log(
      `\nmethods:\n${
        METHODS.map((m) => `  ${m.padEnd(12)} ${METHOD_SPECS[m].summary}`).join("\n")
      }`,
    );
    return;
  }
  const engine = await Engine.create({ verbose: true });
  const progress = new ProgressBar(0);
  const result = await runTraining(engine, invocation, { progress });
  console.log(`\n${summaryTable(result)}`);
}

if (import.meta.main) await runMain(main);
