// What `deno task browser`'s server and its page (cli/browser_page.ts) exchange over HTTP.
import type { TrainOptions } from "../fed/options.ts";
import type { Measurement, RunEvent } from "../fed/records.ts";
import type { EvaluationUpdate, ProgressUpdate } from "../model/progress.ts";

/**
 * GET /run.json: what the tab does, the run's options and the names of the categories it holds
 * (their streams: /data/<k>/<split>). "run": the whole simulated federation; "join": client
 * `client` of the networked run at `server`, holding its own category only.
 */
export type RunInput =
  & { options: TrainOptions; categories: string[] }
  & ({ mode: "run" } | { mode: "join"; server: string; client: number });

/** POST /event: what happens in the page, in order. The adapters (POST /adapters/<id>) and the
 * shared tensors (POST /global) arrive before "result". */
export type PageEvent =
  | { kind: "total"; total: number }
  | { kind: "begin"; step: number }
  | { kind: "update"; update: ProgressUpdate }
  | { kind: "evaluation"; update: EvaluationUpdate }
  | { kind: "log"; line: string }
  | { kind: "done" }
  | { kind: "record"; record: Measurement }
  | { kind: "event"; event: RunEvent }
  | { kind: "result"; pretrainedPpl: number[] }
  | { kind: "error"; message: string; stack: string };
