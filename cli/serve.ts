// `deno task serve`: the server of a federation across processes or machines (fed/http_server.ts).
// It takes train's flags (the run's options, which every client receives) plus where to listen,
// holds no model weight and no token, and writes the run folder: config.json, metrics.jsonl,
// summary.json, global.safetensors and its state; `--resume DIR` continues it. Each device runs
// `deno task join --server URL --client ID --out DIR` and keeps its data and specialists.
import { checkFederated } from "../fed/methods.ts";
import { summaryTable } from "../fed/records.ts";
import { serveRun } from "../fed/run.ts";
import type { TrainOptions } from "../fed/options.ts";
import { type FlagSpec, helpText, parseFlags, parsePort, runMain, withFlags } from "./args.ts";
import { ProgressBar } from "./progress.ts";
import { TRAIN_FLAGS, trainInvocation } from "./train_flags.ts";

export const DEFAULT_PORT = 8700;
const USAGE = "deno task serve [train's flags] [--host H] [--port N] | --resume DIR [--host H] " +
  "[--port N]";
const FLAGS: FlagSpec = {
  ...TRAIN_FLAGS,
  host: {
    type: "string",
    help: "address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)",
  },
  port: { type: "string", help: `port (default ${DEFAULT_PORT}; 0: any free one)` },
};

export type Invocation =
  | { help: true }
  | {
    start: { options: TrainOptions; overwrite: boolean } | { resume: string };
    hostname: string;
    port: number;
  };

export function parseInvocation(args: string[], now = new Date()): Invocation {
  const { host, port, ...run } = parseFlags(args, FLAGS, USAGE);
  const invocation = trainInvocation(run, now);
  if ("help" in invocation) return invocation;
  if ("options" in invocation) withFlags(FLAGS, () => checkFederated(invocation.options.method));
  return {
    start: invocation,
    hostname: (host as string | undefined) ?? "127.0.0.1",
    port: parsePort(port as string | undefined, DEFAULT_PORT),
  };
}

async function main(): Promise<void> {
  const invocation = parseInvocation(Deno.args);
  if ("help" in invocation) {
    console.log(helpText(FLAGS, USAGE));
    return;
  }
  const progress = new ProgressBar(0);
  const { start, hostname, port } = invocation;
  const overwrite = "overwrite" in start && start.overwrite;
  const { summary, pretrainedPpl, out } = await serveRun(start, {
    progress,
    hostname,
    port,
    overwrite,
  });
  console.log(`\n${summaryTable(summary, pretrainedPpl)}`);
  console.log(`\nrun folder: ${out}`);
}

if (import.meta.main) await runMain(main, FLAGS);
