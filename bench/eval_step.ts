// What an evaluation pass costs (issue 17): a federated run evaluates every client's adapted
// model over its whole test split (StreamEvaluator, as fed/client.ts builds it), and that should
// cost no more than a forward pass at the same batch shape. `eval_vs_forward` times, over the
// same 8 × 128-token windows of one stream, on the shipped GPT-2 base (models/base) and the
// Llama-family base (models/base-llama, or its configuration with random weights) with
// CoMiGS-1G1S adapters (E = 2, top-2; initAdapters seed 1, then a few expert steps so that the
// adapters change the model):
//   eval           StreamEvaluator.meanLoss with a progress observer, as a run calls it: per
//                  window batch its tokens written, the forward graph recorded once under
//                  noGrad, the per-token losses kept, a wait for the GPU; one readback at the end
//   forward        the same graph recorded under noGrad, its mean loss read back per batch
//   train_forward  the forward of the expert step as training records it (LoRA tensors
//                  requiring gradients: the cross-entropy also writes dlogits), loss read back
//   step           the whole expert step (forward, backward, AdamW), loss read back
//   base_eval      StreamEvaluator.meanLoss of the frozen base model (the run's base column)
// in interleaved rounds (bench/interleave.ts: interleavedPasses), reporting per pass tokens/s
// at the median wall time and at the fastest round, and the CPU time of the process per window
// batch (every thread: lavapipe's workers run the kernels, so this is the cost that other jobs'
// load does not inflate). ratio = eval's time over forward's (median of per-round ratios; ≤ 1
// is the target), cpu_ratio the same in CPU time; tokens_per_s and ms (per batch) are
// eval's. Before timing, the evaluator's mean loss must
// equal the mean of the forward's per-batch losses over the same windows, training's forward
// must give the forward's losses, and the adapted evaluation must differ from the base's.
import type { Command, Engine } from "../engine/device.ts";
import { Tape } from "../engine/tape.ts";
import { AdapterTensors, initAdapters } from "../model/adapters.ts";
import { dimsOf } from "../model/base.ts";
import type { BaseModel } from "../model/base_model.ts";
import { TokenBatch } from "../model/batch.ts";
import { forwardAdapted } from "../model/comigs.ts";
import { StreamEvaluator } from "../model/evaluate.ts";
import { evalBatches, evalWindows } from "../model/pretrain_data.ts";
import { benchAdapterConfig, perBase, trainingStep } from "./comigs_step.ts";
import { interleavedPasses, round3 } from "./interleave.ts";

const B = 8, T = 128;
/** Window batches per pass: every pass reads the same BATCHES · B · T targets. */
const BATCHES = 4;
/** Expert steps taken before the checks, so that the adapters are no longer the base (B = 0). */
const WARM_STEPS = 3;
/**
 * The evaluator's mean (float64 over float32 per-token losses) against the mean of the
 * forward's per-batch float32 means of the same losses: float32 rounding of a 1,024-term sum of
 * values near 8 stays well under 1e-5, while a window read wrongly moves the mean by ~1e-2.
 */
const SAME_MEAN = 1e-5;
/** A few expert steps move the adapted model's loss by far more than this from the base's. */
const ADAPTED = 1e-3;

const PASSES = ["eval", "forward", "train_forward", "step", "base_eval"] as const;

export function evalVsForward(
  engine: Engine,
  opts: { runs: number },
): Promise<Record<string, unknown>[]> {
  return perBase(engine, "eval_vs_forward", (model) => compare(engine, model, opts.runs));
}

/** One family's record: every pass checked, then timed in interleaved rounds. */
async function compare(
  engine: Engine,
  model: BaseModel,
  runs: number,
): Promise<Record<string, unknown>> {
  const { vocab, layers } = dimsOf(model.config);
  let seed = 7;
  const next = () => (seed = (seed * 1103515245 + 12345) >>> 0) % vocab;
  const stream = Uint32Array.from({ length: BATCHES * B * T + 1 }, next);
  const batches = evalBatches(evalWindows(stream, T, 0), B, T).map((ws) => ws.map((w) => w.ids));
  const config = benchAdapterConfig(layers, 2);
  const adapters = new AdapterTensors(
    engine,
    model.config,
    config,
    initAdapters(model.config, config, 1),
  );
  const batch = new TokenBatch(engine, model.config, B, T);
  const step = trainingStep(engine, model, adapters, batch);
  const evaluator = new StreamEvaluator(
    engine,
    model.config,
    stream,
    B,
    T,
    (tape, b) => forwardAdapted(tape, model, adapters, b).tokenLosses,
  );
  const baseEvaluator = new StreamEvaluator(
    engine,
    model.config,
    stream,
    B,
    T,
    (tape, b) => model.forward(tape, b).tokenLosses,
  );
  const forwardTape = new Tape(engine);
  try {
    const forwardLoss = forwardTape.noGrad(() =>
      forwardAdapted(forwardTape, model, adapters, batch).loss
    );
    const forward = forwardTape.forward();
    batch.set(batches[0]);
    for (let s = 0; s < WARM_STEPS; s++) await engine.run(step.commands(), "eval bench warm-up");

    /** Each batch through `commands`, reading `loss` after each: its per-batch losses. */
    const perBatch = async (commands: Command[], loss = forwardLoss) => {
      const losses: number[] = [];
      for (const ids of batches) {
        batch.set(ids);
        await engine.run(commands, "eval bench pass");
        losses.push((await engine.readF32(loss))[0]);
      }
      return losses;
    };
    const forwardLosses = await perBatch(forward);
    const mean = forwardLosses.reduce((a, b) => a + b, 0) / forwardLosses.length;
    const evaluated = await evaluator.meanLoss(() => {});
    const trained = await perBatch(step.forward, step.loss);
    const baseMean = await baseEvaluator.meanLoss(() => {});
    const ok = Math.abs(evaluated - mean) < SAME_MEAN &&
      trained.every((loss, i) => Math.abs(loss - forwardLosses[i]) < SAME_MEAN) &&
      Math.abs(evaluated - baseMean) > ADAPTED;

    const passes: Record<typeof PASSES[number], () => Promise<void>> = {
      eval: async () => void await evaluator.meanLoss(() => {}),
      forward: async () => void await perBatch(forward),
      train_forward: async () => void await perBatch(step.forward, step.loss),
      step: async () => void await perBatch(step.commands(), step.loss),
      base_eval: async () => void await baseEvaluator.meanLoss(() => {}),
    };
    const timed = await interleavedPasses(PASSES.map((name) => passes[name]), runs);
    const tokens = BATCHES * B * T;
    const rate = (ms: number) => Math.round(tokens / (ms / 1000));
    // Per pass: tokens/s at its median and at its fastest round, CPU ms per window batch.
    const perPass = PASSES.flatMap((name, i) => [
      [`${name}_tokens_per_s`, rate(timed.ms[i])],
      [`${name}_best_tokens_per_s`, rate(timed.min[i])],
      [`${name}_cpu_ms`, round3(timed.cpuMs[i] / BATCHES)],
    ]);
    return {
      B,
      T,
      batches: BATCHES,
      ratio: round3(timed.ratios[PASSES.indexOf("forward")]),
      cpu_ratio: round3(timed.cpuRatios[PASSES.indexOf("forward")]),
      tokens_per_s: rate(timed.ms[0]),
      ms: round3(timed.ms[0] / BATCHES),
      ...Object.fromEntries(perPass),
      runs,
      ok,
      adapter: engine.adapterName,
    };
  } finally {
    forwardTape.dispose();
    baseEvaluator.dispose();
    evaluator.dispose();
    step.dispose();
    batch.dispose();
    adapters.dispose();
  }
}
