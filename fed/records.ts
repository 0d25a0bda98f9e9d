// What a run records (interfaces.md "Training runs"): one metric record per evaluation and
// split (metrics.jsonl) and, once it has finished, its summary (summary.json).
import { markdownTable } from "../model/markdown_table.ts";
import { type Method, METHOD_SPECS } from "./methods.ts";
import type { TrainOptions } from "./options.ts";
import type { Scenario } from "./scenarios.ts";

export interface MetricRecord {
  round: number;
  step: number;
  client: number;
  split: "train" | "val" | "test";
  loss: number;
  ppl: number;
  wall_s: number;
}

/** A record as the computation reports it; the run folder adds ppl and wall_s. */
export type Measurement = Omit<MetricRecord, "ppl" | "wall_s">;

export interface ClientSummary {
  id: number;
  name: string;
  n_experts: number;
  train_tokens: number;
  test_ppl: number;
}

export interface Summary {
  method: Method;
  scenario: Scenario;
  ood: boolean;
  seed: number;
  base_model: string;
  clients: ClientSummary[];
  mean_test_ppl: number;
  pretrained_mean_test_ppl: number;
}

/** Each category's last recorded test perplexity: a finished run's result. */
export function finalTestPpl(metrics: readonly MetricRecord[], categories: number): number[] {
  return Array.from(
    { length: categories },
    (_, id) => metrics.findLast((m) => m.split === "test" && m.client === id)!.ppl,
  );
}

/** summary.json of a finished run. */
export function summarise(
  options: TrainOptions,
  clients: readonly { name: string; trainTokens: number }[],
  testPpl: readonly number[],
  pretrainedPpl: readonly number[],
): Summary {
  const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const spec = METHOD_SPECS[options.method];
  return {
    method: options.method,
    scenario: options.scenario,
    ood: options.ood,
    seed: options.seed,
    base_model: options.model,
    clients: clients.map((c, id) => ({
      id,
      name: c.name,
      n_experts: spec.frozen ? 0 : options.experts[spec.pooled ? 0 : id],
      train_tokens: c.trainTokens,
      test_ppl: testPpl[id],
    })),
    mean_test_ppl: mean(testPpl),
    pretrained_mean_test_ppl: mean(pretrainedPpl),
  };
}

/** The records of a metrics.jsonl text, one JSON object per non-empty line. */
export function parseMetrics(text: string): MetricRecord[] {
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as MetricRecord);
}

/** A finished run's per-client table (Markdown, padded for a terminal). */
export function summaryTable(summary: Summary, pretrainedPpl: readonly number[]): string {
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
