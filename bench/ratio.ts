// Our texture matmul against the measuring stick /work/shared/bench/mm_ref.ts (the fastest
// matmul known on lavapipe), side by side in one run: the machine drifts up to 2× over minutes,
// so absolute GFLOP/s are only comparable when interleaved. mm_ref times one dispatch per submit
// (submit latency included) on operands already in textures; we time one whole matmul per submit,
// our pack kernels included, and take the median of the per-round ratios.
import type { Engine } from "../engine/device.ts";
import { Tape } from "../engine/tape.ts";
import { matmul } from "../kernels/matmul.ts";
import { matmulEntryRef, type MatmulShape } from "../tests/ref/matmul.ts";
import { Rng } from "../tests/util.ts";

const M = 512, K = 768, N = 3072, RUNS = 7;
const SAMPLES = 256;
/** f32 accumulation over K: errors ≲ u·√K·Σ|a·b| with u = 2⁻²⁴; 4× margin (see matmul_test.ts). */
const BOUND = 4 * 2 ** -24 * Math.sqrt(K);

/** One run of the reference: its GFLOP/s for a single timed dispatch, or null if it failed. */
async function referenceRun(path: string): Promise<{ gflops: number; ok: boolean } | null> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", path, String(M), String(K), String(N), "1"],
    stdout: "piped",
    stderr: "null",
  }).output();
  if (!output.success) return null;
  const line = new TextDecoder().decode(output.stdout).trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line);
  } catch {
    return null;
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  return sorted[sorted.length >> 1];
}

/** The ratio record, or null when the measuring stick is not beside the project. */
export async function matmulVsReference(engine: Engine): Promise<Record<string, unknown> | null> {
  const path = new URL("../../shared/bench/mm_ref.ts", import.meta.url);
  try {
    await Deno.stat(path);
  } catch {
    return null;
  }
  const rng = new Rng(2024);
  const aValues = Float32Array.from({ length: M * K }, () => rng.next() - 0.5);
  const bValues = Float32Array.from({ length: K * N }, () => rng.next() - 0.5);
  const tape = new Tape(engine);
  const a = engine.tensor([M, K], { data: aValues, label: "a" });
  const b = engine.tensor([K, N], { data: bValues, label: "b" });
  try {
    const c = matmul(tape, a, b, { variant: "texture" });
    const commands = tape.forward();
    await engine.run(commands, "matmul vs ref");
    await engine.sync();
    const got = await engine.readF32(c);
    const shape: MatmulShape = { batch: 1, M, K, N, transA: false, transB: false, bBatched: false };
    let matches = true;
    for (let s = 0; s < SAMPLES; s++) {
      const m = Math.floor(rng.next() * M), n = Math.floor(rng.next() * N);
      const ref = matmulEntryRef(aValues, bValues, null, shape, 0, m, n);
      if (!(Math.abs(got[m * N + n] - ref.value) <= BOUND * ref.scale)) matches = false;
    }
    const ours: number[] = [], theirs: number[] = [], ratios: number[] = [];
    let referenceOk = true;
    for (let round = 0; round < RUNS; round++) {
      // Alternate who goes first, so a drift within a round favours neither.
      const timeOurs = async () => {
        const t0 = performance.now();
        await engine.run(commands, "matmul vs ref");
        await engine.sync();
        return performance.now() - t0;
      };
      let ms: number, ref: Awaited<ReturnType<typeof referenceRun>>;
      if (round % 2 === 0) {
        ms = await timeOurs();
        ref = await referenceRun(path.pathname);
      } else {
        ref = await referenceRun(path.pathname);
        ms = await timeOurs();
      }
      if (!ref) return { kernel: "matmul_vs_ref", ok: false, error: "mm_ref.ts failed to run" };
      referenceOk &&= ref.ok;
      const gflops = (2 * M * K * N) / ms / 1e6;
      ours.push(gflops);
      theirs.push(ref.gflops);
      ratios.push(gflops / ref.gflops);
    }
    const gflops = median(ours);
    return {
      kernel: "matmul_vs_ref",
      variant: "texture",
      M,
      K,
      N,
      ratio: round3(median(ratios)),
      gflops: round3(gflops),
      ref_gflops: round3(median(theirs)),
      ms: round3((2 * M * K * N) / gflops / 1e6),
      runs: RUNS,
      ok: matches && referenceOk,
      adapter: engine.adapterName,
    };
  } finally {
    tape.dispose();
    a.dispose();
    b.dispose();
  }
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
