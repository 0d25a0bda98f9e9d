// A tiny federated run shared by the run and browser tests: the shipped base model, two clients
// with different short text (numbers vs letters, 1–2k tokens each), 2×16-token batches.
import { resolveTrainOptions, type TrainOptions } from "../../fed/options.ts";
import type { Method } from "../../fed/methods.ts";
import type { ClientCorpus } from "../../fed/scenarios.ts";

export const MODEL = new URL("../../models/base", import.meta.url).pathname;

/** Two small clients with different text (numbers vs letters), 1–2k tokens each. */
export function corpora(): ClientCorpus[] {
  const docs = (make: (i: number) => string, n: number) =>
    Array.from({ length: n }, (_, i) => make(i));
  const numbers = (i: number) =>
    Array.from({ length: 40 }, (_, k) => `Item ${i * 40 + k} costs ${(k * 7) % 13} dollars.`).join(
      " ",
    );
  const words = (i: number) =>
    Array.from({ length: 40 }, (_, k) => `The ${["red", "old", "tall"][k % 3]} house ${i} stood.`)
      .join(" ");
  return [
    {
      name: "numbers",
      train: docs(numbers, 4),
      val: docs(numbers, 1),
      test: docs((i) => numbers(i + 9), 1),
    },
    {
      name: "words",
      train: docs(words, 4),
      val: docs(words, 1),
      test: docs((i) => words(i + 9), 1),
    },
  ];
}

export function options(out: string, method: Method, rounds = 2): TrainOptions {
  return resolveTrainOptions({
    method,
    clients: 2,
    experts: method === "comigs-1gxs" ? [1, 3] : [2, 2],
    trainTokens: [null, null],
    model: MODEL,
    rounds,
    localSteps: 2,
    routerEvery: 1,
    routerSteps: 1,
    routerOnTrain: false,
    ood: false,
    batch: 2,
    seq: 16,
    out,
  });
}
