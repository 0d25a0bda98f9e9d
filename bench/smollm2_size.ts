// A Llama-family base of SmolLM2-135M's size on our engine (issue 14): random weights written in
// the Hugging Face layout (config.json with model_type llama + one F32 model.safetensors, by the
// project's own writer) into a temporary folder, loaded back through the normal loader
// (loadBaseCheckpoint, createModel), CoMiGS-1G1S adapters on it (LoRA on q/k/v/o, two SwiGLU
// LoRA experts under a top-2 router; bench/comigs_step.ts's settings), and timed expert steps
// (forward, backward, AdamW on the LoRA tensors, one submit each) against the same step in plain
// PyTorch on the CPU (scripts/torch_llama_step.py, float32, 2 threads, Debian's torch), which
// reads the same folder: the same weights, adapters and token ids.
//
// Checks before timing: our first loss reproduces the frozen base's (lora_B = 0), every objective
// is finite, and PyTorch's first objectives (loss + λ·LB) equal ours (the two compute the same
// steps). Timing: rounds of `--steps` steps on each side, the side that goes first alternating
// from round to round (the machine drifts); PyTorch starts afresh each round and times its steps
// after one warm-up step. Prints one JSON record per side: seconds per step and tokens/s (medians
// over every timed step), memory (ours: the bytes the engine allocated on the adapter, and this
// process's peak resident memory, which on lavapipe holds the "GPU" memory too, and the load's
// file bytes and f32 copies; PyTorch: its process's peak resident memory), and (ours) the median
// over rounds of our step time over PyTorch's.
//
//   deno run -A bench/smollm2_size.ts [--batch 4] [--seq 128] [--steps 3] [--rounds 3]
//     [--python /usr/bin/python3] [--no-torch]
import { parseArgs } from "node:util";
import { Engine } from "../engine/device.ts";
import { Tape } from "../engine/tape.ts";
import { AdapterTensors, initAdapters, loadAdapters, saveAdapters } from "../model/adapters.ts";
import { parameterCount } from "../model/base.ts";
import { TokenBatch } from "../model/batch.ts";
import { loadBaseCheckpoint, saveBaseCheckpoint } from "../model/checkpoint.ts";
import { initBaseWeights } from "../model/init.ts";
import type { LlamaConfig } from "../model/llama_config.ts";
import { createModel } from "../model/load.ts";
import { Mulberry32 } from "../model/rng.ts";
import { benchAdapterConfig, timedSteps, trainingStep } from "./comigs_step.ts";
import { positiveFlag } from "./flags.ts";
import { runTorchSteps, type TorchResult } from "./torch_steps.ts";
import { median, round3 } from "./interleave.ts";

/** SmolLM2-135M's config.json (HuggingFaceTB/SmolLM2-135M), in our parsed form. */
const SMOLLM2_135M: LlamaConfig = {
  model_type: "llama",
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  head_dim: 64,
  rms_norm_eps: 1e-5,
  rope_theta: 100000,
  rope_scaling: null,
  max_position_embeddings: 8192,
  vocab_size: 49152,
  tie_word_embeddings: true,
  attention_bias: false,
  bos_token_id: 0,
  eos_token_id: 0,
};
/** Our first loss against the frozen base's: equal up to f32 reassociation of zero LoRA terms. */
const SAME_LOSS = 1e-4;
/**
 * PyTorch's objectives (loss + λ·LB) against ours, step by step from the same start: both f32
 * with other summation orders, they agree to ~1e-6 on a loss of ~10.8 (measured: ≤ 2e-6 over the
 * first steps). 1e-4 leaves room and still catches a step that computes something else: on a
 * 2-layer model, the down LoRA's delta without its scale s or λ·LB left out moved them by 1e-2;
 * at this size, gradients summed over steps instead of zeroed moved the third by 7e-2.
 */
const SAME_STEPS = 1e-4;
/** Steps taken before timing: the check, and our pipelines compiled. */
const CHECK_STEPS = 3;

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    batch: { type: "string", default: "4" },
    seq: { type: "string", default: "128" },
    steps: { type: "string", default: "3" },
    rounds: { type: "string", default: "3" },
    python: { type: "string", default: "/usr/bin/python3" },
    "no-torch": { type: "boolean", default: false },
  },
  strict: true,
});
const positive = (name: string, text: string) => positiveFlag("smollm2_size", name, text);
const B = positive("batch", flags.batch), T = positive("seq", flags.seq);
const steps = positive("steps", flags.steps), rounds = positive("rounds", flags.rounds);
const withTorch = !flags["no-torch"];
const config = SMOLLM2_135M;
const log = (line: string) => console.error(`smollm2_size: ${line}`);

const dir = await Deno.makeTempDir({ prefix: "smollm2-size-" });
try {
  log(`writing random weights (${parameterCount(config)} parameters) to ${dir}`);
  await saveBaseCheckpoint(dir, { config, weights: initBaseWeights(config, 1) });
  const adapterConfig = benchAdapterConfig(config.num_hidden_layers, 2);
  await saveAdapters(`${dir}/adapters.safetensors`, config, {
    config: adapterConfig,
    values: initAdapters(config, adapterConfig, 1),
  });
  const rng = new Mulberry32(42);
  const ids = Array.from(
    { length: B },
    () => Array.from({ length: T + 1 }, () => Math.floor(rng.next() * config.vocab_size)),
  );
  await Deno.writeTextFile(`${dir}/batch.json`, JSON.stringify({ ids }));
  const records = await measure(dir, ids);
  for (const record of records) console.log(JSON.stringify(record));
  if (records.some((r) => !r.ok)) Deno.exit(1);
} finally {
  await Deno.remove(dir, { recursive: true });
}

async function measure(dir: string, ids: number[][]): Promise<Record<string, unknown>[]> {
  const engine = await Engine.create({ verbose: true });
  const { config: loaded, weights } = await loadBaseCheckpoint(dir);
  const model = createModel(engine, loaded, weights);
  const file = await loadAdapters(`${dir}/adapters.safetensors`, loaded);
  const adapters = new AdapterTensors(engine, loaded, file.config, file.values);
  const batch = new TokenBatch(engine, loaded, B, T);
  batch.set(ids);
  log(`loaded through loadBaseCheckpoint; base loss`);
  const baseTape = new Tape(engine);
  const baseLoss = baseTape.noGrad(() => model.forward(baseTape, batch).loss);
  await engine.run(baseTape.forward(), "base loss");
  const reference = (await engine.readF32(baseLoss))[0];
  baseTape.dispose();
  // The base loss's activations go back to the driver: the bytes below are the training step's.
  engine.pool.trim();
  const step = trainingStep(engine, model, adapters, batch);
  try {
    const losses: number[] = [], objectives: number[] = [];
    for (let s = 0; s < CHECK_STEPS; s++) {
      await engine.run(step.commands(), "check step");
      losses.push((await engine.readF32(step.loss))[0]);
      objectives.push((await engine.readF32(step.objective))[0]);
    }
    log(`base loss ${reference}; our first losses ${losses.join(", ")}`);
    log(`our first objectives ${objectives.join(", ")}`);
    let ok = Math.abs(losses[0] - reference) < SAME_LOSS && objectives.every(Number.isFinite);
    const ourSeconds: number[] = [], torchSeconds: number[] = [], ratios: number[] = [];
    let torchRss = 0, torchVersion = "", torchThreads = 0;
    for (let round = 0; round < rounds; round++) {
      const timeOurs = async () => {
        const { seconds, finite } = await timedSteps(engine, step, steps);
        ok &&= finite;
        return seconds;
      };
      const timeTorch = async () => {
        if (!withTorch) return [];
        const result = await torchSteps(dir);
        torchRss = Math.max(torchRss, result.peak_rss_bytes);
        torchVersion = result.torch;
        torchThreads = result.threads;
        // Its first objectives (warm-up included) are ours: both start from the same folder.
        const first = result.objectives.slice(0, CHECK_STEPS);
        const gap = Math.max(...first.map((value, s) => Math.abs(value - objectives[s])));
        log(`PyTorch's first objectives ${first.join(", ")}: at most ${gap} from ours`);
        ok &&= gap < SAME_STEPS;
        return result.step_s;
      };
      const [mine, theirs] = round % 2 === 0
        ? [await timeOurs(), await timeTorch()]
        : [await timeTorch(), await timeOurs()].reverse();
      log(
        `round ${round + 1}/${rounds}: ours ${mine.map(round3).join(", ")} s/step; ` +
          `PyTorch ${theirs.map(round3).join(", ")} s/step; load ${loadAverage()}`,
      );
      ourSeconds.push(...mine);
      torchSeconds.push(...theirs);
      if (withTorch) ratios.push(median(mine) / median(theirs));
    }
    const shared = { kernel: "smollm2_size_step", config: "smollm2-135m", B, T };
    const perStep = (seconds: number[]) => ({
      tokens_per_s: round3(B * T / median(seconds)),
      s_per_step: round3(median(seconds)),
    });
    const records: Record<string, unknown>[] = [{
      ...shared,
      variant: "engine",
      params: parameterCount(loaded),
      ...perStep(ourSeconds),
      ...(withTorch ? { ratio: round3(median(ratios)) } : {}),
      gpu_bytes: engine.bytesAllocated,
      peak_rss_bytes: peakRss(),
      runs: ourSeconds.length,
      ok,
      adapter: engine.adapterName,
    }];
    if (withTorch) {
      records.push({
        ...shared,
        variant: "torch-cpu",
        ...perStep(torchSeconds),
        peak_rss_bytes: torchRss,
        runs: torchSeconds.length,
        ok,
        adapter: `PyTorch ${torchVersion} CPU, ${torchThreads} threads, float32`,
      });
    }
    return records;
  } finally {
    step.dispose();
    batch.dispose();
    adapters.dispose();
    model.dispose();
    await engine.close();
  }
}

/** One run of scripts/torch_llama_step.py on `dir`: one warm-up step, then `steps` timed. */
function torchSteps(dir: string): Promise<TorchResult> {
  const script = new URL("../scripts/torch_llama_step.py", import.meta.url).pathname;
  const args = [script, dir, "--steps", String(steps), "--warmup", "1", "--threads", "2"];
  return runTorchSteps("smollm2_size", flags.python, args, ", or --no-torch");
}

/** This process's peak resident memory in bytes (Linux), or null where /proc cannot tell. */
function peakRss(): number | null {
  try {
    const line = Deno.readTextFileSync("/proc/self/status").match(/^VmHWM:\s+(\d+) kB$/m);
    return line ? Number(line[1]) * 1024 : null;
  } catch {
    return null;
  }
}

function loadAverage(): string {
  return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
}
