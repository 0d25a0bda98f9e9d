// The tiny CoMiGS run the comigs Flower tests share (the federation tests' tiny configuration,
// tests/fed/tiny_run.ts, with a third client): the shipped base model, three clients with
// different short text, 2 rounds of 2 local steps of 2×16-token batches. The same run three ways:
// the options of the simulation, the ServerApp's run config, and each node's flags.
import {
  resolveTrainOptions,
  type TrainOptions,
  type TrainOptionsInput,
} from "../../fed/options.ts";
import type { Method } from "../../fed/methods.ts";
import type { ClientCorpus } from "../../fed/scenarios.ts";
import { corpora as twoCorpora, MODEL } from "../fed/tiny_run.ts";

export { MODEL };

/** tiny_run.ts's two clients (numbers, words) and a third (letters). */
export function corpora(): ClientCorpus[] {
  const letters = (i: number) =>
    Array.from(
      { length: 40 },
      (_, k) => `Letter ${String.fromCharCode(65 + (i * 7 + k) % 26)} comes ${k % 5} times.`,
    ).join(" ");
  const docs = (make: (i: number) => string, n: number, from = 0) =>
    Array.from({ length: n }, (_, i) => make(i + from));
  return [
    ...twoCorpora(),
    { name: "letters", train: docs(letters, 4), val: docs(letters, 1), test: docs(letters, 1, 9) },
  ];
}

/** What the three ways share; the rest are train's defaults (pyproject.toml's too). */
const RUN = { rounds: 2, localSteps: 2, routerEvery: 1, routerSteps: 1, batch: 2, seq: 16 };

/** The simulation's options (clients 0..2 with `experts`; `extra`: more of train's options). */
export function simOptions(
  out: string,
  method: Method,
  experts: number[],
  extra: TrainOptionsInput = {},
): TrainOptions {
  return resolveTrainOptions({
    ...RUN,
    ...extra,
    method,
    clients: 3,
    experts,
    trainTokens: [null, null, null],
    model: MODEL,
    out,
  });
}

/** The ServerApp's run config (`flwr run --run-config`). */
export function serverConfig(method: Method): Record<string, string | number> {
  return {
    method,
    rounds: RUN.rounds,
    "local-steps": RUN.localSteps,
    "router-every": RUN.routerEvery,
    "router-steps": RUN.routerSteps,
    batch: RUN.batch,
    seq: RUN.seq,
  };
}

/** The flags of node `client` (comigs_node.ts, i.e. `deno task flower-node`). */
export function nodeArgs(superlink: string, client: number, out: string, extra: string[] = []) {
  return [
    "--superlink",
    superlink,
    "--client",
    String(client),
    "--clients",
    "3",
    "--model",
    MODEL,
    "--out",
    out,
    ...extra,
  ];
}
