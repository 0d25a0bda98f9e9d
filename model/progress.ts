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
}

export interface Progress {
  /** Steps of the whole job (set once the job knows it). */
  total: number;
  /** Starts the clock for the time left at `step` (after any setup the estimate should skip). */
  begin(step: number): void;
  update(update: ProgressUpdate): void;
  /** A message of its own line. */
  log(line: string): void;
  /** The job's steps are over. */
  done(): void;
}

/** A Progress that shows nothing. */
export function silentProgress(): Progress {
  return { total: 0, begin() {}, update() {}, log() {}, done() {} };
}
