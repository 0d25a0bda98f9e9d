// `deno task train`: federated fine-tuning of a base model with CoMiGS or a baseline (method.md
// §4) on a real-data scenario (fed/scenarios.ts), simulated in this process (fed/run.ts). The
// defaults are method.md §6's (fed/options.ts); the paper's settings are flags.
import { startEngine } from "./engine.ts";
import { summaryTable } from "../fed/records.ts";
import { prepareRun, runTraining } from "../fed/run.ts";
import { helpText, parseFlags, runMain } from "./args.ts";
import { ProgressBar } from "./progress.ts";
import { methodsHelp, TRAIN_FLAGS, type TrainInvocation, trainInvocation } from "./train_flags.ts";

const USAGE = "deno task train [--method M] [--scenario S] ... | --resume DIR";

export function parseInvocation(args: string[], now = new Date()): TrainInvocation {
  return trainInvocation(parseFlags(args, TRAIN_FLAGS, USAGE), now);
}

async function main(): Promise<void> {
  const invocation = parseInvocation(Deno.args);
  if ("help" in invocation) {
    console.log(`${helpText(TRAIN_FLAGS, USAGE)}\n\n${methodsHelp()}`);
    return;
  }
  // Every check (flags, folder, base model, data) before the GPU starts or a file is written.
  const overwrite = "overwrite" in invocation && invocation.overwrite;
  const prepared = await prepareRun(invocation, { overwrite, progress: console });
  const engine = await startEngine();
  const progress = new ProgressBar(0);
  const { summary, pretrainedPpl, out } = await runTraining(engine, prepared, { progress });
  console.log(`\n${summaryTable(summary, pretrainedPpl)}`);
  console.log(
    `\nrun folder: ${out} (summary.json, metrics.jsonl, clients/<id>/adapters.safetensors)`,
  );
}

if (import.meta.main) await runMain(main, TRAIN_FLAGS);
