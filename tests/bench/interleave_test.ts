// bench/interleave.ts's interleavedPasses: the order rotates from round to round, wall time and
// CPU time are told apart, and the ratios compare pass 0 with each pass round by round. The
// passes sleep or spin (no GPU), with bounds loose enough for a machine shared with other jobs.
import process from "node:process";
import { interleavedPasses } from "../../bench/interleave.ts";
import { assert, assertEquals } from "../assert.ts";

const sleep = (ms: number) => new Promise<void>((done) => setTimeout(done, ms));

/** Spins until the process has spent `ms` more CPU time: CPU-bound whatever the load. */
function spin(ms: number): Promise<void> {
  const start = process.cpuUsage();
  for (;;) {
    const { user, system } = process.cpuUsage(start);
    if ((user + system) / 1000 >= ms) return Promise.resolve();
  }
}

Deno.test("interleavedPasses rotates the order of the passes from round to round", async () => {
  const order: number[] = [];
  const pass = (i: number) => () => {
    order.push(i);
    return Promise.resolve();
  };
  await interleavedPasses([pass(0), pass(1), pass(2)], 3);
  assertEquals(order, [0, 1, 2, 1, 2, 0, 2, 0, 1]);
});

Deno.test("interleavedPasses reports wall time, CPU time and per-round ratios", async () => {
  const { ms, min, cpuMs, ratios, cpuRatios } = await interleavedPasses(
    [() => sleep(20), () => sleep(60), () => spin(30)],
    3,
  );
  // Sleeping takes wall time and (next to) no CPU time; spinning takes its CPU time.
  assert(ms[0] >= 19 && ms[1] >= 59 && min[1] >= 59 && min[1] <= ms[1], `wall ${ms}, min ${min}`);
  assert(cpuMs[0] < 10 && cpuMs[1] < 10, `sleeping passes spent CPU: ${cpuMs}`);
  assert(cpuMs[2] >= 30 && ms[2] >= cpuMs[2] / 2, `spinning pass: wall ${ms[2]}, cpu ${cpuMs[2]}`);
  // Pass 0 over each pass: 1 for itself, ~1/3 against the 60 ms sleep, far above 1 in CPU
  // against the spin (a 20 ms sleep costs a small fraction of 30 ms of CPU).
  assertEquals(ratios[0], 1);
  assert(ratios[1] > 0.2 && ratios[1] < 0.5, `20 ms over 60 ms: ${ratios[1]}`);
  assert(cpuRatios[2] < 0.3, `a sleep's CPU over a 30 ms spin's: ${cpuRatios[2]}`);
});
