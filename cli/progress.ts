// A progress bar for long runs on stderr: steps done, training tokens/s, the latest loss and
// the time left (from the wall time per step since `begin`, so periodic evaluations count). On a terminal it redraws one line in place; otherwise (a log file, CI) every update is
// its own line, so logs stay readable. Messages printed through `log` never interleave with it.
import type { Progress, ProgressUpdate } from "../model/progress.ts";

export class ProgressBar implements Progress {
  #start = performance.now();
  #firstStep: number;
  readonly #encoder = new TextEncoder();
  #drawn = false;

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

  update({ step, context, tokensPerSecond, loss }: ProgressUpdate): void {
    const seconds = (performance.now() - this.#start) / 1000;
    const stepsDone = step - this.#firstStep;
    const eta = stepsDone > 0 ? (this.total - step) * seconds / stepsDone : NaN;
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
      this.write(`\r\x1b[2K${bar} ${parts}`);
      this.#drawn = true;
    } else this.write(`${parts}\n`);
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
