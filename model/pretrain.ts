// Pretraining our own base model: a small GPT-2 trained from scratch on general English that
// the fine-tuning scenarios never use (the caller passes the documents, split into train and
// held-out by document; `deno task pretrain` reads fed/corpora.ts's).
//
//   1. a byte-level BPE is trained on the train documents only and saved beside the model;
//   2. the model starts from GPT-2's initialisation (model/init.ts) and trains with AdamW
//      (β 0.9/0.95, weight decay 0.1 on 2-D weights only) on random windows of the train stream,
//      the learning rate warming up linearly and then decaying along the cosine of
//      model/schedule.ts;
//   3. every evalEvery steps, held-out perplexity over every held-out token goes to log.jsonl;
//   4. every saveEvery steps and at the end, `out` gets a loadable base model (config.json,
//      model.safetensors, vocab.json, merges.txt) and resume.safetensors (weights, AdamW moments,
//      step, PRNG state, time), each file written atomically. resume.safetensors alone defines
//      the state to continue from, so a kill between two files never mixes two steps.
//
// Resuming reloads the options saved in resume.safetensors and continues: the same batches in
// the same order, so the weights equal those of an uninterrupted run bit for bit.
import type { Engine } from "../engine/device.ts";
import { Tape, zeroGrad } from "../engine/tape.ts";
import { saveBpe, trainBpe } from "./bpe_train.ts";
import { saveBaseCheckpoint } from "./checkpoint.ts";
import { type BaseConfig, baseParameterShapes, parameterCount } from "./base.ts";
import { StreamEvaluator } from "./evaluate.ts";
import { TokenBatch } from "./batch.ts";
import { initBaseWeights } from "./init.ts";
import { createModel } from "./load.ts";
import { checkChoice, checkInteger, checkReal, OptionError } from "./option_error.ts";
import { AdamW } from "./optim.ts";
import { BatchSampler, tokenStream } from "./pretrain_data.ts";
import { evaluationProgress, type Progress, silentProgress } from "./progress.ts";
import {
  type NamedTensor,
  readSafetensors,
  writeFileAtomic,
  writeSafetensors,
} from "./safetensors.ts";
import { cosineLr } from "./schedule.ts";
import { loadTokenizer } from "./tokenizer.ts";

export interface PretrainOptions {
  out: string;
  steps: number;
  batch: number;
  seq: number;
  lr: number;
  warmup: number;
  evalEvery: number;
  saveEvery: number;
  seed: number;
  vocab: number;
  layers: number;
  heads: number;
  embd: number;
  /** gpt2, or llama (RMSNorm, rotary positions, grouped-query attention, SwiGLU, tied head). */
  arch: "gpt2" | "llama";
  /** llama: key/value heads, dividing heads (grouped-query attention). */
  kvHeads: number;
  /** llama: the SwiGLU MLP's width. */
  intermediate: number;
}

export const PRETRAIN_DEFAULTS: PretrainOptions = {
  out: "models/base",
  steps: 3000,
  batch: 16,
  seq: 128,
  lr: 2e-3,
  warmup: 100,
  evalEvery: 250,
  saveEvery: 250,
  seed: 1,
  vocab: 4096,
  layers: 4,
  heads: 4,
  embd: 128,
  arch: "gpt2",
  kvHeads: 2,
  // ≈ 8/3 of embd (Llama's ratio), a multiple of 8: a parameter count like GPT-2's 4·embd MLP.
  intermediate: 344,
};

/** Checks every option (OptionError names the first bad one). */
export function checkPretrainOptions(options: PretrainOptions): void {
  const limits: [keyof PretrainOptions, number, number][] = [
    ["steps", 1, Infinity],
    ["batch", 1, Infinity],
    ["seq", 1, 1024],
    ["warmup", 0, Infinity],
    ["evalEvery", 1, Infinity],
    ["saveEvery", 1, Infinity],
    ["seed", 0, 2 ** 32 - 1],
    ["vocab", 258, 65536],
    ["layers", 1, Infinity],
    ["heads", 1, Infinity],
    ["embd", 1, Infinity],
    ["kvHeads", 1, Infinity],
    ["intermediate", 1, Infinity],
  ];
  for (const [key, min, max] of limits) checkInteger(key, options[key] as number, min, max);
  checkReal("lr", options.lr, (x) => x > 0, "> 0");
  if (options.out === "") throw new OptionError("out", "must name a folder");
  if (options.warmup > options.steps) {
    throw new OptionError("warmup", `${options.warmup} exceeds {steps} ${options.steps}`);
  }
  if (options.embd % options.heads !== 0) {
    throw new OptionError("embd", `${options.embd} must be divisible by {heads} ${options.heads}`);
  }
  checkChoice("arch", options.arch, ["gpt2", "llama"] as const);
  if (options.arch === "llama") {
    if (options.heads % options.kvHeads !== 0) {
      throw new OptionError("kvHeads", `${options.kvHeads} must divide {heads} ${options.heads}`);
    }
    if ((options.embd / options.heads) % 2 !== 0) {
      throw new OptionError("embd", `/ {heads} must be even: rotary positions rotate pairs`);
    }
  }
}

export function modelConfig(options: PretrainOptions): BaseConfig {
  if (options.arch === "llama") {
    return {
      model_type: "llama",
      hidden_size: options.embd,
      intermediate_size: options.intermediate,
      num_hidden_layers: options.layers,
      num_attention_heads: options.heads,
      num_key_value_heads: options.kvHeads,
      head_dim: options.embd / options.heads,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      rope_scaling: null,
      max_position_embeddings: options.seq,
      vocab_size: options.vocab,
      tie_word_embeddings: true,
      attention_bias: false,
      bos_token_id: null,
      // Our BPE's end-of-text token is its last.
      eos_token_id: options.vocab - 1,
    };
  }
  return {
    n_layer: options.layers,
    n_head: options.heads,
    n_embd: options.embd,
    vocab_size: options.vocab,
    n_positions: options.seq,
    layer_norm_epsilon: 1e-5,
  };
}

/** Linear warm-up to `lr` over `warmup` steps, then a cosine down to 10% at the last step. */
export function learningRate(options: PretrainOptions, step: number): number {
  const { lr, warmup, steps } = options;
  if (step < warmup) return lr * (step + 1) / warmup;
  const decaySteps = steps - warmup;
  const progress = decaySteps <= 1 ? 1 : (step - warmup) / (decaySteps - 1);
  return cosineLr(lr, progress);
}

export interface EvalRecord {
  step: number;
  tokens: number;
  train_loss: number | null;
  val_loss: number;
  val_ppl: number;
  lr: number;
  wall_s: number;
}

/** What resume.safetensors' metadata holds besides the tensors. */
interface ResumeMeta {
  options: PretrainOptions;
  step: number;
  rngState: number;
  elapsedS: number;
  /** The train losses summed since the last evaluation, for that evaluation's train_loss. */
  lossSum: number;
  lossCount: number;
}

export interface PretrainHooks {
  /** Stop after this many steps (a checkpoint is written), as if the process were killed. */
  stopAfter?: number;
  /** Where progress goes (default: nowhere). */
  progress?: Progress;
  /** The command that repeats the run, written to train_command.txt beside the model. */
  commandLine?: (options: PretrainOptions) => string;
}

/** The documents' texts, split into train and held-out (by document). */
export interface PretrainTexts {
  train: readonly string[];
  heldOut: readonly string[];
}

const RESUME_FILE = "resume.safetensors";
const LOG_FILE = "log.jsonl";
/** Seeds the batch PRNG apart from the weights' (the same mulberry32 stream otherwise). */
const DATA_SEED_OFFSET = 0x9e3779b9;

/** Runs (or, with `resume`, continues) a pretraining run; returns the evaluation log. */
export async function pretrain(
  engine: Engine,
  start: { options: PretrainOptions } | { resume: string },
  { train, heldOut }: PretrainTexts,
  hooks: PretrainHooks = {},
): Promise<EvalRecord[]> {
  const saved = "resume" in start ? await readResumeState(start.resume) : undefined;
  const options = saved ? saved.meta.options : (start as { options: PretrainOptions }).options;
  checkPretrainOptions(options);
  const { out, batch: B, seq: T } = options;
  const config = modelConfig(options);
  const progress = hooks.progress ?? silentProgress();
  progress.total = options.steps;

  if (heldOut.length === 0) throw new Error("no document fell into the held-out split");
  if (!saved) {
    progress.log(`training a ${options.vocab}-token BPE on ${train.length} documents`);
    await saveBpe(out, trainBpe(train, options.vocab));
  }
  const tokenizer = await loadTokenizer(out, options.vocab);
  const trainStream = tokenStream(tokenizer, train);
  const heldOutStream = tokenStream(tokenizer, heldOut);
  const sampler = new BatchSampler(
    trainStream,
    B,
    T,
    saved?.meta.rngState ?? (options.seed + DATA_SEED_OFFSET) >>> 0,
  );
  progress.log(
    `${parameterCount(config)} parameters; ${trainStream.length} train tokens ` +
      `(${train.length} documents), ${heldOutStream.length} held-out (${heldOut.length})`,
  );

  const model = createModel(
    engine,
    config,
    saved?.weights ?? initBaseWeights(config, options.seed),
  );
  model.setTrainable(true);
  const params = [...model.params.values()];
  const trainBatch = new TokenBatch(engine, config, B, T);
  const tape = new Tape(engine);
  const { loss } = model.forward(tape, trainBatch);
  const forward = tape.forward();
  const backward = tape.backward(loss);
  const opt = new AdamW(engine, params, {
    lr: options.lr,
    betas: [0.9, 0.95],
    weightDecay: 0.1,
    decay: (p) => p.shape.length === 2,
  });
  if (saved) opt.importState(saved.optimizer);
  const evaluator = new StreamEvaluator(
    engine,
    config,
    heldOutStream,
    B,
    T,
    (tape, batch) => model.forward(tape, batch).tokenLosses,
  );

  let step = saved?.meta.step ?? 0;
  let { lossSum, lossCount } = saved?.meta ?? { lossSum: 0, lossCount: 0 };
  const elapsedBefore = saved?.meta.elapsedS ?? 0;
  const sessionStart = performance.now();
  const elapsed = () => elapsedBefore + (performance.now() - sessionStart) / 1000;
  // Entries past the checkpoint were written by the session that died after it.
  const log = saved ? (await readLog(out)).filter((r) => r.step <= step) : [];

  let evalSecondsSum = 0, evaluations = 0;
  const evaluate = async () => {
    const evalStart = performance.now();
    const valLoss = await evaluator.meanLoss(
      evaluationProgress(progress, `step ${step}: held-out`),
    );
    const evalSeconds = (performance.now() - evalStart) / 1000;
    evalSecondsSum += evalSeconds;
    evaluations++;
    const record: EvalRecord = {
      step,
      tokens: step * B * T,
      train_loss: lossCount ? lossSum / lossCount : null,
      val_loss: valLoss,
      val_ppl: Math.exp(valLoss),
      lr: learningRate(options, Math.max(step - 1, 0)),
      wall_s: Math.round(elapsed() * 10) / 10,
    };
    lossSum = lossCount = 0;
    log.push(record);
    await writeFileAtomic(
      `${out}/${LOG_FILE}`,
      new TextEncoder().encode(log.map((r) => JSON.stringify(r) + "\n").join("")),
    );
    progress.log(
      `step ${step}: held-out loss ${valLoss.toFixed(4)}, perplexity ` +
        `${record.val_ppl.toFixed(2)} (${heldOutStream.length} tokens in ${
          evalSeconds.toFixed(1)
        } s)`,
    );
  };
  const save = async () => {
    const meta: ResumeMeta = {
      options,
      step,
      rngState: sampler.rng.state,
      elapsedS: elapsed(),
      lossSum,
      lossCount,
    };
    const weights = await model.weights();
    await writeResumeState(out, meta, weights, await opt.exportState());
    await saveBaseCheckpoint(out, { config, weights });
    if (hooks.commandLine) {
      await writeFileAtomic(
        `${out}/train_command.txt`,
        new TextEncoder().encode(hooks.commandLine(options) + "\n"),
      );
    }
  };

  if (step === 0) await evaluate();
  const stopAt = Math.min(options.steps, hooks.stopAfter ?? Infinity);
  let sessionTokens = 0, trainSeconds = 0;
  progress.begin(step);
  while (step < stopAt) {
    const stepStart = performance.now();
    trainBatch.set(sampler.next());
    await engine.run(
      [...zeroGrad(params), ...forward, ...backward, ...opt.step(learningRate(options, step))],
      "pretrain step",
    );
    step++;
    sessionTokens += B * T;
    // Each read waits for the step (~12 ms): small next to a step of this size.
    const stepLoss = (await engine.readF32(loss))[0];
    trainSeconds += (performance.now() - stepStart) / 1000;
    if (!Number.isFinite(stepLoss)) throw new Error(`step ${step}: the loss is ${stepLoss}`);
    lossSum += stepLoss;
    lossCount++;
    // The time left: the steps to come at this session's pace, and the evaluations to come at
    // the pace of those measured (once one was).
    const evalsLeft = Math.floor(options.steps / options.evalEvery) -
      Math.floor(step / options.evalEvery) + (options.steps % options.evalEvery ? 1 : 0);
    const secondsLeft = (options.steps - step) * trainSeconds / (sessionTokens / (B * T)) +
      (evaluations ? evalsLeft * evalSecondsSum / evaluations : 0);
    progress.update({
      step,
      tokensPerSecond: sessionTokens / trainSeconds,
      loss: stepLoss,
      etaSeconds: secondsLeft,
    });
    if (step % options.evalEvery === 0 || step === options.steps) await evaluate();
    if (step % options.saveEvery === 0 || step === stopAt) await save();
  }
  progress.done();

  evaluator.dispose();
  opt.dispose();
  tape.dispose();
  trainBatch.dispose();
  model.dispose();
  return log;
}

async function writeResumeState(
  out: string,
  meta: ResumeMeta,
  weights: Map<string, Float32Array>,
  optimizer: { step: number; m: Float32Array[]; v: Float32Array[] },
): Promise<void> {
  const tensors: [string, NamedTensor][] = [];
  const config = modelConfig(meta.options);
  const shapes = [...baseParameterShapes(config)];
  shapes.forEach(([name, shape], i) => {
    tensors.push([`param.${name}`, { shape, data: weights.get(name)! }]);
    tensors.push([`adam_m.${name}`, { shape, data: optimizer.m[i] }]);
    tensors.push([`adam_v.${name}`, { shape, data: optimizer.v[i] }]);
  });
  await writeSafetensors(`${out}/${RESUME_FILE}`, tensors, {
    format: "comigs-pretrain-resume-1",
    options: JSON.stringify(meta.options),
    step: String(meta.step),
    adam_step: String(optimizer.step),
    rng_state: String(meta.rngState),
    elapsed_s: String(meta.elapsedS),
    // Exact decimal round trip of the float64 sum (JSON numbers are shortest round-trip).
    loss_sum: JSON.stringify(meta.lossSum),
    loss_count: String(meta.lossCount),
  });
}

async function readResumeState(dir: string) {
  const path = `${dir}/${RESUME_FILE}`;
  try {
    await Deno.stat(path);
  } catch {
    throw new OptionError(
      "resume",
      `${dir}: no ${RESUME_FILE} there (no checkpoint was written yet)`,
    );
  }
  const { tensors, metadata } = await readSafetensors(path);
  if (metadata.format !== "comigs-pretrain-resume-1") {
    throw new OptionError("resume", `${dir}: ${path} is not a pretraining resume state`);
  }
  // States written before an option existed ran with its default.
  const options = {
    ...PRETRAIN_DEFAULTS,
    ...JSON.parse(metadata.options),
    out: dir,
  } as PretrainOptions;
  const names = [...baseParameterShapes(modelConfig(options)).keys()];
  const tensor = (name: string) => {
    const t = tensors.get(name);
    if (!t) throw new Error(`${path}: tensor ${name} missing`);
    return t.data;
  };
  const meta: ResumeMeta = {
    options,
    step: Number(metadata.step),
    rngState: Number(metadata.rng_state),
    elapsedS: Number(metadata.elapsed_s),
    lossSum: JSON.parse(metadata.loss_sum),
    lossCount: Number(metadata.loss_count),
  };
  return {
    meta,
    weights: new Map(names.map((n) => [n, tensor(`param.${n}`)])),
    optimizer: {
      step: Number(metadata.adam_step),
      m: names.map((n) => tensor(`adam_m.${n}`)),
      v: names.map((n) => tensor(`adam_v.${n}`)),
    },
  };
}

async function readLog(out: string): Promise<EvalRecord[]> {
  let text = "";
  try {
    text = await Deno.readTextFile(`${out}/${LOG_FILE}`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return text.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line));
}

/** The held-out perplexity curve as a small text table. */
export function perplexityTable(log: readonly EvalRecord[]): string {
  const rows = log.map((
    r,
  ) => [String(r.step), String(r.tokens), r.val_loss.toFixed(4), r.val_ppl.toFixed(2)]);
  const header = ["step", "tokens", "val_loss", "val_ppl"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  return [header, ...rows].map((r) => r.map((c, i) => c.padStart(widths[i])).join("  "))
    .join("\n");
}
