// `deno task join`: one device of a federation served by `deno task serve` (fed/http_server.ts). It
// takes the run's options from the server, keeps only its own category of the scenario, trains
// its experts and router where it runs, and sends only what its method shares. Its folder holds
// its state after every round (a restarted client continues) and, at the end, its adapters.
import { startEngine } from "./engine.ts";
import { type JoinOptions, joinRun } from "../fed/join.ts";
import { type FlagSpec, helpText, parseFlags, runMain } from "./args.ts";
import { joinFromFlags } from "./join_flags.ts";
import { ProgressBar } from "./progress.ts";

const USAGE = "deno task join --server URL --client ID --out DIR [--model DIR]";
const FLAGS: FlagSpec = {
  server: { type: "string", help: "the server's address, as `deno task serve` prints it" },
  client: { type: "string", help: "this device's client id, 0..N−1 (its category of the data)" },
  out: { type: "string", help: "this client's folder: its state, then its adapters" },
  model: {
    type: "string",
    help:
      "this device's copy of the base model, a folder or hf:ORG/NAME@REVISION (default: the server's)",
  },
  help: { type: "boolean", help: "show this help" },
};

export function parseInvocation(args: string[]): { help: true } | { join: JoinOptions } {
  const flags = parseFlags(args, FLAGS, USAGE);
  if (flags.help) return { help: true as const };
  return { join: joinFromFlags(flags, "server", `\n\n${helpText(FLAGS, USAGE)}`) };
}

async function main(): Promise<void> {
  const invocation = parseInvocation(Deno.args);
  if ("help" in invocation) {
    console.log(helpText(FLAGS, USAGE));
    return;
  }
  const engine = await startEngine();
  const progress = new ProgressBar(0);
  const { name, rounds } = await joinRun(engine, invocation.join, { progress });
  console.log(
    `client ${invocation.join.client} (${name}): ${rounds} rounds done; adapters in ` +
      `${invocation.join.out}/adapters.safetensors`,
  );
}

if (import.meta.main) await runMain(main, FLAGS);
