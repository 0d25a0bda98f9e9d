// `deno task bench`: every case is checked against its float64 reference, then timed as whole
// submits (median of --runs). Prints a table, or with --json one object per line as
// interfaces.md specifies. --filter NAME keeps cases whose kernel contains NAME.
import { parseArgs } from "node:util";
import { type Command, Engine } from "../engine/device.ts";
import { chooseKernelVariant, kernelVariant, parseKernelVariant } from "../kernels/variant.ts";
import type { BenchCase } from "./case.ts";
import { allCases } from "./cases/index.ts";
import { matmulVsReference } from "./ratio.ts";
import { moeMlpVsLoraMlp } from "./cases/moe_mlp.ts";
import { moeSwigluVsLoraMlp } from "./cases/moe_swiglu.ts";
import { comigsVsLoraStep } from "./comigs_step.ts";
import { comigsSparseVsDense, mixtureDispatchCrossover } from "./comigs_sparse.ts";
import { trainStepCases } from "./train_step.ts";
import { evalVsForward } from "./eval_step.ts";
import { trainStepVsTorch } from "./gpt2_vs_torch.ts";
import { positiveFlag } from "./flags.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    json: { type: "boolean", default: false },
    filter: { type: "string" },
    runs: { type: "string", default: "7" },
    variant: { type: "string" },
    "torch-rounds": { type: "string", default: "3" },
    "torch-steps": { type: "string", default: "3" },
    python: { type: "string", default: "/usr/bin/python3" },
    help: { type: "boolean", default: false },
  },
  strict: true,
});
if (flags.help) {
  console.log(
    "usage: deno task bench [--json] [--filter NAME] [--runs N] [--variant texture|storage]\n" +
      "  [--torch-rounds 3] [--torch-steps 3] [--python /usr/bin/python3]\n" +
      "  (train_step_vs_torch: interleaved rounds, steps timed per side and round, the Python\n" +
      "  that has torch)",
  );
  Deno.exit(0);
}
const runs = positiveFlag("bench", "runs", flags.runs);
const vsTorch = {
  rounds: positiveFlag("bench", "torch-rounds", flags["torch-rounds"]),
  steps: positiveFlag("bench", "torch-steps", flags["torch-steps"]),
  python: flags.python,
};

const engine = await Engine.create({ verbose: !flags.json });
if (flags.variant) chooseKernelVariant(engine, parseKernelVariant(flags.variant, "--variant"));
if (!flags.json) console.error(`kernels: ${kernelVariant(engine)}`);
const selected = allCases.filter((c) => !flags.filter || c.kernel.includes(flags.filter));

async function measure(benchCase: BenchCase): Promise<Record<string, unknown>> {
  const setup = await benchCase.setup(engine);
  try {
    await engine.run(setup.commands, benchCase.kernel);
    await engine.sync();
    const ok = await setup.check();
    // One submit-and-wait costs ~12 ms on lavapipe whatever it holds, so each timed submit
    // repeats the commands enough times to take at least TARGET_MS, and ms is per repetition.
    const single = await timeSubmit(setup.commands);
    const reps = Math.max(1, Math.min(1000, Math.ceil(TARGET_MS / single)));
    const repeated = Array.from({ length: reps }, () => setup.commands).flat();
    const times: number[] = [];
    for (let r = 0; r < runs; r++) times.push(await timeSubmit(repeated) / reps);
    times.sort((a, b) => a - b);
    const ms = times[times.length >> 1];
    const rate = setup.flops !== undefined
      ? { gflops: round(setup.flops / ms / 1e6) }
      : { gbs: round(setup.bytes! / ms / 1e6) };
    return {
      kernel: benchCase.kernel,
      ...(benchCase.variant ? { variant: benchCase.variant } : {}),
      ...benchCase.shape,
      ...rate,
      ms: round(ms),
      runs,
      reps,
      ok,
      adapter: engine.adapterName,
    };
  } finally {
    setup.dispose();
  }
}

const TARGET_MS = 200;

async function timeSubmit(commands: Command[]): Promise<number> {
  const t0 = performance.now();
  await engine.run(commands, "bench");
  await engine.sync();
  return performance.now() - t0;
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

function report(result: Record<string, unknown>): void {
  results.push(result);
  if (flags.json) return console.log(JSON.stringify(result));
  const { kernel, variant, config, ok, adapter: _, runs: __, reps: ___, ...rest } = result;
  console.log(
    `${String(kernel).padEnd(20)} ${[config, variant].filter(Boolean).join(" ").padEnd(10)} ` +
      `${ok ? "ok  " : "FAIL"} ` + Object.entries(rest).map(([k, v]) => `${k}=${v}`).join(" "),
  );
}

/** Benchmarks that time whole programs rather than one case's commands. */
const programs: { kernel: string; run: () => Promise<Record<string, unknown>[]> }[] = [
  {
    kernel: "matmul_vs_ref",
    run: async () => {
      const result = await matmulVsReference(engine);
      return result ? [result] : [];
    },
  },
  { kernel: "train_step", run: () => trainStepCases(engine, { runs }) },
  { kernel: "moe_mlp_vs_lora_mlp", run: () => moeMlpVsLoraMlp(engine, { runs }) },
  { kernel: "moe_swiglu_vs_lora_mlp", run: () => moeSwigluVsLoraMlp(engine, { runs }) },
  { kernel: "comigs_vs_lora_step", run: () => comigsVsLoraStep(engine, { runs }) },
  { kernel: "comigs_sparse_vs_dense", run: () => comigsSparseVsDense(engine, { runs }) },
  { kernel: "mixture_dispatch_crossover", run: () => mixtureDispatchCrossover(engine, { runs }) },
  { kernel: "eval_vs_forward", run: () => evalVsForward(engine, { runs }) },
  { kernel: "train_step_vs_torch", run: () => trainStepVsTorch(engine, vsTorch) },
];

const results: Record<string, unknown>[] = [];
for (const benchCase of selected) report(await measure(benchCase));
for (const program of programs) {
  if (flags.filter && !program.kernel.includes(flags.filter)) continue;
  for (const result of await program.run()) report(result);
}
if (!flags.json) {
  console.log(`bytes allocated: ${engine.bytesAllocated}, pipelines: ${engine.pipelines.size}`);
}
if (results.some((r) => !r.ok)) Deno.exit(1);
