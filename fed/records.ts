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

/**
 * What else happened in a round, recorded in metrics.jsonl beside the metrics (these records
 * have an `event` and no `split`): a result left out of the round (with the reason), a round
 * that kept the previous global, the clients drawn to train, the privacy spent so far.
 */
export type RunEvent =
  | { round: number; event: "refused"; client: number; reason: string }
  | { round: number; event: "kept-global"; reason: string }
  | { round: number; event: "sampled"; clients: number[] }
  | { round: number; event: "privacy"; epsilon: number; delta: number };

/** A line of metrics.jsonl: a metric or an event. */
export type RunRecord = MetricRecord | (RunEvent & { wall_s: number });

/** The metric records among `records` (events left out). */
export function metricsOnly(records: readonly RunRecord[]): MetricRecord[] {
  return records.filter((r): r is MetricRecord => "split" in r);
}

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
  /** With differential privacy: its settings and the ε spent (at δ) over the run. */
  privacy?: {
    mode: "central" | "local";
    clip: number;
    noise: number;
    delta: number;
    epsilon: number;
  };
  /** A networked run's clients reported their names, training tokens and test losses
   * themselves: the server could not check them. */
  reported_by_clients?: true;
}

/** Each category's last recorded test perplexity: a finished run's result. */
export function finalTestPpl(records: readonly RunRecord[], categories: number): number[] {
  const metrics = metricsOnly(records);
  return Array.from(
    { length: categories },
    (_, id) => metrics.findLast((m) => m.split === "test" && m.client === id)?.ppl ?? NaN,
  );
}

/** summary.json of a finished run. */
export function summarise(
  options: TrainOptions,
  clients: readonly { name: string; trainTokens: number }[],
  records: readonly RunRecord[],
  pretrainedPpl: readonly number[],
  { reportedByClients = false } = {},
): Summary {
  const testPpl = finalTestPpl(records, clients.length);
  const spent = records.findLast((r) => "event" in r && r.event === "privacy");
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
    ...options.dp !== "none" && spent && "epsilon" in spent
      ? {
        privacy: {
          mode: options.dp,
          clip: options.dpClip,
          noise: options.dpNoise,
          delta: options.dpDelta,
          epsilon: spent.epsilon,
        },
      }
      : {},
    ...reportedByClients ? { reported_by_clients: true as const } : {},
  };
}

/** The records of a metrics.jsonl text, one JSON object per non-empty line. */
export function parseMetrics(text: string): RunRecord[] {
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as RunRecord);
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
  const table = markdownTable(rows, {
    pad: true,
    align: ["left", "left", ...new Array(4).fill("right")],
  });
  const p = summary.privacy;
  if (!p) return table;
  return `${table}\n\nprivacy (${p.mode} DP, clip ${p.clip}, noise ${p.noise}): ` +
    `(ε, δ) = (${p.epsilon.toFixed(2)}, ${p.delta})`;
}
