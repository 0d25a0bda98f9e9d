// The progress display of long jobs on stderr: a bar of training steps (tokens/s, the latest
// loss, the time left) and a line for each evaluation (windows done of total, tokens/s). The
// time left is the job's own estimate when it gives one (training and evaluation alike, see
// fed/rounds.ts), else the wall time per step since `begin`. On a terminal one line is redrawn in
// place; otherwise (a log file, CI) updates are lines of their own, evaluations at most one
// every few seconds, so logs stay readable. Messages printed through `log` never interleave.
import type { EvaluationUpdate, Progress, ProgressUpdate } from "../model/progress.ts";

/** Without a terminal, an evaluation prints its progress at most this often (and when done). */
const LOG_EVALUATION_EVERY_S = 10;

export class ProgressBar implements Progress {
  #start = performance.now();
  #firstStep: number;
  readonly #encoder = new TextEncoder();
  #drawn = false;
  #lastEvaluationLine = 0;

  constructor(
    /** Steps of the whole run (settable once the run knows it). */
    public total: number,
    firstStep = 0,
    readonly isTTY = Deno.stderr.isTerminal(),
    readonly write = (text: string): void => {
      Deno.stderr.writeSync(this.#encoder.encode(text));
    },
  ) {
    this.#firstStep = firstStep;
  }

  /** Starts the clock for the time left at `step` (after any setup the estimate should skip). */
  begin(step: number): void {
    this.#start = performance.now();
    this.#firstStep = step;
  }

  update({ step, context, tokensPerSecond, loss, etaSeconds }: ProgressUpdate): void {
    const seconds = (performance.now() - this.#start) / 1000;
    const stepsDone = step - this.#firstStep;
    const eta = etaSeconds ?? (stepsDone > 0 ? (this.total - step) * seconds / stepsDone : NaN);
    const parts = [
      context ?? "",
      `step ${step}/${this.total}`,
      `${Math.round(tokensPerSecond)} tok/s`,
      loss === undefined ? "" : `loss ${loss.toFixed(4)}`,
      `ETA ${formatDuration(eta)}`,
    ].filter(Boolean).join("  ");
    if (this.isTTY) {
      const width = 24, filled = Math.round(width * step / Math.max(this.total, 1));
      const bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`;
      this.#draw(`${bar} ${parts}`);
    } else this.write(`${parts}\n`);
  }

  evaluation({ context, done, total, tokensPerSecond }: EvaluationUpdate): void {
    const line = `evaluating ${context}  ${done}/${total} windows  ` +
      `${Math.round(tokensPerSecond)} tok/s`;
    if (this.isTTY) return this.#draw(line);
    const now = performance.now();
    if (done === total || now - this.#lastEvaluationLine >= LOG_EVALUATION_EVERY_S * 1000) {
      this.#lastEvaluationLine = now;
      this.write(`${line}\n`);
    }
  }

  /** Prints a line of its own above the bar. */
  log(line: string): void {
    this.#clear();
    this.write(`${line}\n`);
  }

  /** Ends the bar's line. */
  done(): void {
    if (this.#drawn) this.write("\n");
    this.#drawn = false;
  }

  #draw(line: string): void {
    this.write(`\r\x1b[2K${line}`);
    this.#drawn = true;
  }

  #clear(): void {
    if (this.#drawn) this.write("\r\x1b[2K");
    this.#drawn = false;
  }
}

/** "1h02m", "3m05s", "12s", or "?" while unknown. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), rest = s % 60;
  const pad = (n: number) => String(n).padStart(2, "0");
  if (h) return `${h}h${pad(m)}m`;
  if (m) return `${m}m${pad(rest)}s`;
  return `${rest}s`;
}
