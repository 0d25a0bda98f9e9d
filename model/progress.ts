// What a long job (pretraining, a federated run, a client's rounds) tells its caller as it goes.
// The library only calls this interface; the CLI's progress bar (cli/progress.ts) implements it,
// a browser tab forwards it to its server, and a library user may pass their own.

export interface ProgressUpdate {
  step: number;
  /** Where the job is, e.g. "round 3/10 client 2 (fiction)". */
  context?: string;
  /** Training throughput (the caller times its steps, leaving evaluations out). */
  tokensPerSecond: number;
  loss?: number;
  /** Seconds left of the whole job, training and evaluation alike, when the job can tell. */
  etaSeconds?: number;
}

/** How far an evaluation (a pass over every window of a stream) has come. */
export interface EvaluationUpdate {
  /** What is evaluated, e.g. "round 3: client 2 (fiction) test". */
  context: string;
  /** Windows of the stream done, of `total`. */
  done: number;
  total: number;
  tokensPerSecond: number;
}

export interface Progress {
  /** Steps of the whole job (set once the job knows it). */
  total: number;
  /** Starts the clock for the time left at `step` (after any setup the estimate should skip). */
  begin(step: number): void;
  update(update: ProgressUpdate): void;
  /** A message of its own line. */
  log(line: string): void;
  /** An evaluation's progress (optional: without it evaluations run unobserved, a little faster). */
  evaluation?(update: EvaluationUpdate): void;
  /** The job's steps are over. */
  done(): void;
}

/** Called after each batch of an evaluation: windows done of total, tokens read so far. */
export type BatchProgress = (done: number, total: number, tokens: number) => void;

/** The per-batch callback of an evaluation of `context` reported to `progress` (undefined when
 * `progress` does not observe evaluations). */
export function evaluationProgress(
  progress: Progress | undefined,
  context: string,
): BatchProgress | undefined {
  if (!progress?.evaluation) return undefined;
  const start = performance.now();
  return (done, total, tokens) =>
    progress.evaluation!({
      context,
      done,
      total,
      tokensPerSecond: tokens / Math.max((performance.now() - start) / 1000, 1e-9),
    });
}

/** A Progress that shows nothing. */
export function silentProgress(): Progress {
  return { total: 0, begin() {}, update() {}, log() {}, done() {} };
}
