// `deno task pretrain`: our own base model (model/pretrain.ts), trained on the State of the Union
// addresses and the bodies of the SpamAssassin ham emails (fed/corpora.ts), split into train and
// held-out by document. `--resume OUT` continues a run from its last checkpoint, bit for bit.
import { startEngine } from "./engine.ts";
import { readPretrainCorpora, splitDocuments } from "../fed/corpora.ts";
import {
  checkPretrainOptions,
  perplexityTable,
  pretrain,
  PRETRAIN_DEFAULTS,
  type PretrainOptions,
} from "../model/pretrain.ts";
import {
  type FlagSpec,
  helpText,
  numberFlag,
  parseFlags,
  runMain,
  UsageError,
  withFlags,
} from "./args.ts";
import { ProgressBar } from "./progress.ts";

const DEFAULTS = PRETRAIN_DEFAULTS;

/** Flag name → option key, in the order train_command.txt lists them. */
const FLAG_KEYS: [string, keyof PretrainOptions][] = [
  ["out", "out"],
  ["steps", "steps"],
  ["batch", "batch"],
  ["seq", "seq"],
  ["lr", "lr"],
  ["warmup", "warmup"],
  ["eval-every", "evalEvery"],
  ["save-every", "saveEvery"],
  ["seed", "seed"],
  ["vocab", "vocab"],
  ["layers", "layers"],
  ["heads", "heads"],
  ["embd", "embd"],
  ["arch", "arch"],
  ["kv-heads", "kvHeads"],
  ["intermediate", "intermediate"],
];

const USAGE = "deno task pretrain [--out DIR] [--steps N] ... | --resume DIR";
const FLAGS: FlagSpec = {
  out: { type: "string", help: `output folder (default ${DEFAULTS.out})` },
  steps: { type: "string", help: `optimiser steps, ≥ 1 (default ${DEFAULTS.steps})` },
  batch: { type: "string", help: `sequences per step, ≥ 1 (default ${DEFAULTS.batch})` },
  seq: { type: "string", help: `tokens per sequence = n_positions, ≥ 1 (default ${DEFAULTS.seq})` },
  lr: { type: "string", help: `peak learning rate, > 0 (default ${DEFAULTS.lr})` },
  warmup: { type: "string", help: `linear warm-up steps, 0..steps (default ${DEFAULTS.warmup})` },
  "eval-every": {
    type: "string",
    help: `held-out evaluation period, ≥ 1 (default ${DEFAULTS.evalEvery})`,
  },
  "save-every": { type: "string", help: `checkpoint period, ≥ 1 (default ${DEFAULTS.saveEvery})` },
  seed: {
    type: "string",
    help: `seed of init and batches, 0..4294967295 (default ${DEFAULTS.seed})`,
  },
  vocab: { type: "string", help: `BPE vocabulary size, 258..65536 (default ${DEFAULTS.vocab})` },
  layers: { type: "string", help: `transformer blocks, ≥ 1 (default ${DEFAULTS.layers})` },
  heads: { type: "string", help: `attention heads, dividing --embd (default ${DEFAULTS.heads})` },
  embd: { type: "string", help: `embedding width, ≥ 1 (default ${DEFAULTS.embd})` },
  arch: {
    type: "string",
    help: `gpt2 | llama (RMSNorm, rotary positions, grouped-query attention, SwiGLU, tied ` +
      `embeddings) (default ${DEFAULTS.arch})`,
  },
  "kv-heads": {
    type: "string",
    help: `llama: key/value heads, dividing --heads (default ${DEFAULTS.kvHeads})`,
  },
  intermediate: {
    type: "string",
    help: `llama: the SwiGLU MLP's width (default ${DEFAULTS.intermediate})`,
  },
  resume: { type: "string", help: "continue the run in DIR (no other flag allowed)" },
  help: { type: "boolean", help: "show this help" },
};

/** The command line: either options for a new run or the folder of a run to resume. */
export type Invocation = { help: true } | { resume: string } | { options: PretrainOptions };

export function parseInvocation(args: string[]): Invocation {
  const flags = parseFlags(args, FLAGS, USAGE);
  if (flags.help) return { help: true };
  const given = FLAG_KEYS.filter(([flag]) => flags[flag] !== undefined).map(([flag]) => flag);
  if (typeof flags.resume === "string") {
    if (given.length) {
      throw new UsageError(
        `--resume takes its options from the run it continues; remove --${given.join(", --")}`,
      );
    }
    return { resume: flags.resume };
  }
  const options = { ...DEFAULTS };
  for (const [flag, key] of FLAG_KEYS) {
    if (key === "out" || key === "arch") {
      (options[key] as string) = (flags[flag] as string | undefined) ?? options[key];
    } else {
      const kind = key === "lr" ? "number" : "integer";
      options[key] = numberFlag(flags, flag, kind) ?? options[key];
    }
  }
  withFlags(FLAGS, () => checkPretrainOptions(options));
  return { options };
}

/** The command that repeats a run. */
export function commandLine(options: PretrainOptions): string {
  const flags = FLAG_KEYS.map(([flag, key]) => `--${flag} ${String(options[key])}`);
  return `deno task pretrain ${flags.join(" ")}`;
}

async function main(): Promise<void> {
  const invocation = parseInvocation(Deno.args);
  if ("help" in invocation) return console.log(helpText(FLAGS, USAGE));
  const engine = await startEngine();
  const { train, heldOut } = splitDocuments(await readPretrainCorpora());
  const log = await pretrain(
    engine,
    invocation,
    { train: train.map((d) => d.text), heldOut: heldOut.map((d) => d.text) },
    { progress: new ProgressBar(0), commandLine },
  );
  const out = "resume" in invocation ? invocation.resume : invocation.options.out;
  console.log(`\nheld-out perplexity:\n${perplexityTable(log)}`);
  console.log(`\nmodel, tokenizer and log in ${out}/; the command is in ${out}/train_command.txt`);
}

if (import.meta.main) await runMain(main, FLAGS);
