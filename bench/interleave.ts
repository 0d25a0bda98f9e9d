// Timing whole programs (command lists) against each other on a machine whose speed drifts (up to
// 2× over minutes): every round times each program once, repeated in one submit to last at least
// ~200 ms (one submit-and-wait costs ~12 ms on lavapipe whatever it holds), the order rotating
// from round to round so that a drift within a round favours none; then per program the median
// ms per repetition, and the median over rounds of the first program's ms over each other's.
import process from "node:process";
import type { Command, Engine } from "../engine/device.ts";

const TARGET_MS = 200;

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[sorted.length >> 1];
}

export const round3 = (x: number) => Math.round(x * 1000) / 1000;

/** ms per repetition of `commands`, repeated `reps` times in one submit. */
async function timeRepeated(engine: Engine, commands: Command[], reps: number): Promise<number> {
  const repeated = Array.from({ length: reps }, () => commands).flat();
  const t0 = performance.now();
  await engine.run(repeated, "interleaved bench");
  await engine.sync();
  return (performance.now() - t0) / reps;
}

/**
 * `runs` interleaved rounds of `programs`: ms[i], the median ms of program i (min[i], its fastest
 * round: the spread on a loaded machine); ratios[i], the median of the per-round ms[0] / ms[i]
 * (ratios[0] = 1); reps, the repetitions per submit (set by the fastest program).
 */
export async function interleaved(
  engine: Engine,
  programs: Command[][],
  runs: number,
): Promise<{ ms: number[]; min: number[]; ratios: number[]; reps: number }> {
  const singles: number[] = [];
  for (const program of programs) singles.push(await timeRepeated(engine, program, 1));
  const reps = Math.max(1, Math.ceil(TARGET_MS / Math.min(...singles)));
  const times = programs.map((): number[] => []);
  for (let round = 0; round < runs; round++) {
    for (let k = 0; k < programs.length; k++) {
      const i = (round + k) % programs.length;
      times[i].push(await timeRepeated(engine, programs[i], reps));
    }
  }
  return {
    ms: times.map(median),
    min: times.map((ts) => Math.min(...ts)),
    ratios: times.map((ts) => median(ts.map((t, round) => times[0][round] / t))),
    reps,
  };
}

/**
 * `runs` interleaved rounds of whole passes (each an async call that ends when the GPU is done),
 * the order rotating as in `interleaved`. Per pass: ms, its median wall time, and min, its
 * fastest round; cpuMs, the median CPU time the process spent (every thread: lavapipe's workers
 * run the kernels, so on a machine shared with other jobs this is the cost that load does not
 * inflate, where wall time waits for the scheduler); ratios[i] and cpuRatios[i], the medians of
 * the per-round time of pass 0 over pass i's.
 */
export async function interleavedPasses(
  passes: (() => Promise<void>)[],
  runs: number,
): Promise<
  { ms: number[]; min: number[]; cpuMs: number[]; ratios: number[]; cpuRatios: number[] }
> {
  const wall = passes.map((): number[] => []);
  const cpu = passes.map((): number[] => []);
  for (let round = 0; round < runs; round++) {
    for (let k = 0; k < passes.length; k++) {
      const i = (round + k) % passes.length;
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      await passes[i]();
      wall[i].push(performance.now() - t0);
      const { user, system } = process.cpuUsage(cpu0);
      cpu[i].push((user + system) / 1000);
    }
  }
  const perRound = (times: number[][]) =>
    times.map((ts) => median(ts.map((t, round) => times[0][round] / t)));
  return {
    ms: wall.map(median),
    min: wall.map((ts) => Math.min(...ts)),
    cpuMs: cpu.map(median),
    ratios: perRound(wall),
    cpuRatios: perRound(cpu),
  };
}
