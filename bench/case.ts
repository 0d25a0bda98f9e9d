// What a benchmark case provides: it builds its tensors and commands once, proves its output
// against a float64 reference, and states its work so the harness can print GFLOP/s or GB/s.
import type { Command, Engine } from "../engine/device.ts";

export interface BenchSetup {
  /** Commands timed as one submit per run. */
  commands: Command[];
  /** Run once before timing; true when the output matches the reference. */
  check: () => Promise<boolean>;
  /** Floating-point operations per run (reported as gflops), or */
  flops?: number;
  /** bytes read plus written per run (reported as gbs). */
  bytes?: number;
  dispose: () => void;
}

export interface BenchCase {
  kernel: string;
  variant?: string;
  /** Shape fields as interfaces.md names them: M, K, N for matmuls; rows, cols or n otherwise. */
  shape: Record<string, number>;
  setup: (engine: Engine) => Promise<BenchSetup>;
}

/** Runs a check that throws on a mismatch (e.g. assertClose) and says whether it passed. */
export async function passes(check: () => Promise<void>): Promise<boolean> {
  try {
    await check();
    return true;
  } catch {
    return false;
  }
}
