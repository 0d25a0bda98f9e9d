// `deno task flower-node`: one device of a federation on Flower (fed/flower/node_run.ts). It joins
// a flower-superlink, takes the run's options from the comigs ServerApp (flower/), trains its
// experts and router on its own data where it runs, and sends only what its method shares. Its
// folder holds its identity, its state after every fit (a restarted node continues) and, at the
// end, its adapters.
import { Engine } from "../engine/device.ts";
import { startEngine } from "./engine.ts";
import type { FlowerNode } from "../fed/flower/node.ts";
import { flowerNodeRun, type FlowerNodeRunOptions } from "../fed/flower/node_run.ts";
import type { ClientCorpus, Scenario } from "../fed/scenarios.ts";
import { SCENARIOS } from "../fed/scenarios.ts";
import { type FlagSpec, helpText, numberFlag, parseFlags, runMain, UsageError } from "./args.ts";
import { ProgressBar } from "./progress.ts";

const USAGE = "deno task flower-node --superlink URL --client ID --out DIR [--model DIR] " +
  "[--scenario S] [--clients N] [--ood] [--experts E] [--train-tokens N] [--ca-cert PEM] " +
  "[--key FILE]";

export const FLOWER_NODE_FLAGS: FlagSpec = {
  superlink: {
    type: "string",
    help: "the SuperLink: http://HOST:PORT (started with --insecure) or https://HOST:PORT (TLS)",
  },
  client: { type: "string", help: "this device's client id, 0..N−1 (its category of the data)" },
  out: {
    type: "string",
    help: "this node's folder: its key, its state, then its adapters (a restart continues)",
  },
  model: {
    type: "string",
    help: "this device's base model: a folder or hf:ORG/NAME[@REVISION] (default models/base)",
  },
  scenario: { type: "string", help: `${SCENARIOS.join(" | ")}: where its data comes from` },
  clients: { type: "string", help: "the scenario's number of clients (default 4)" },
  ood: { type: "boolean", help: "validation and test are a uniform mix of all categories" },
  experts: {
    type: "string",
    help: "this node's experts E (comigs-1gxs; default: the method's for this client id)",
  },
  "train-tokens": {
    type: "string",
    help: "training tokens this node keeps, or all (default all: its whole split)",
  },
  "ca-cert": {
    type: "string",
    help: "PEM file of the CA that signed the SuperLink's certificate (TLS)",
  },
  key: {
    type: "string",
    help: "the node's private key (PKCS#8 PEM; default DIR/node-key.pem, made on first start)",
  },
  help: { type: "boolean", help: "show this help" },
};

export function parseInvocation(args: string[]): { help: true } | { node: FlowerNodeRunOptions } {
  const flags = parseFlags(args, FLOWER_NODE_FLAGS, USAGE);
  if (flags.help) return { help: true };
  const text = (flag: string) => flags[flag] as string | undefined;
  const missing = ["superlink", "client", "out"].filter((f) => text(f) === undefined);
  if (missing.length) {
    throw new UsageError(
      `missing --${missing.join(", --")}\n\n${helpText(FLOWER_NODE_FLAGS, USAGE)}`,
    );
  }
  const tokens = text("train-tokens");
  return {
    node: {
      superlink: text("superlink")!,
      client: numberFlag(flags, "client", "integer")!,
      out: text("out")!,
      model: text("model"),
      scenario: text("scenario") as Scenario | undefined,
      clients: numberFlag(flags, "clients", "integer"),
      ood: flags.ood === true ? true : undefined,
      experts: numberFlag(flags, "experts", "integer"),
      trainTokens: tokens === "all" ? undefined : numberFlag(flags, "train-tokens", "integer"),
      caCert: text("ca-cert"),
      key: text("key"),
    },
  };
}

/** The CLI; `hooks.corpora` gives the node other documents than the scenario's (tests). */
export async function flowerNodeMain(
  args: string[],
  hooks: { corpora?: ClientCorpus[] } = {},
): Promise<void> {
  const invocation = parseInvocation(args);
  if ("help" in invocation) {
    console.log(helpText(FLOWER_NODE_FLAGS, USAGE));
    return;
  }
  const opts = invocation.node;
  if (opts.caCert !== undefined) {
    const path = opts.caCert;
    opts.caCert = await Deno.readTextFile(path).catch((e: Error) => {
      throw new UsageError(`--ca-cert ${path}: cannot read it (${e.message})`);
    });
  }
  // A signal signs the node off, so the SuperLink sees it gone at once, and lets the GPU finish
  // what it was given (Engine.close).
  let node: FlowerNode | undefined;
  for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
    Deno.addSignalListener(signal, async () => {
      await node?.close();
      await Engine.closeAll();
      Deno.exit(code);
    });
  }
  const result = await flowerNodeRun(startEngine, opts, {
    progress: new ProgressBar(0),
    corpora: hooks.corpora,
    connected: (n) => node = n,
  });
  const who = `client ${opts.client} (${result.name})`;
  if (result.endedEarly !== null) {
    throw new Error(
      `${who}: the run ended (${result.endedEarly}) before its last evaluation reached this ` +
        `node, after its fit of round ${result.rounds}; no adapters were written`,
    );
  }
  console.log(`${who}: ${result.rounds} rounds done; adapters in ${result.adapters}`);
}

if (import.meta.main) await runMain(() => flowerNodeMain(Deno.args), FLOWER_NODE_FLAGS);
