// How a finished training run's clients route function words and content words (method.md §5:
// "in the first layer, function words route to the generalist"). Each client's adapted model
// (the run's frozen base + that client's adapters) reads the client's test split as the trainer
// evaluates it (the same scenario load, tokenizer, windows of seq in batches of batch); every
// block's gate is captured and averaged over whole-word tokens by class (model/routing.ts).
//
// Methods without a learned router (fedavg, local, centralized) are refused: their router is
// frozen at zero, so every gate is the constant 1/E and there is nothing to analyse.
import type { Engine } from "../engine/device.ts";
import { type AdapterFile, AdapterTensors, loadAdapters } from "../model/adapters.ts";
import { type BaseCheckpoint, loadBaseCheckpoint } from "../model/checkpoint.ts";
import { forwardAdapted } from "../model/comigs.ts";
import { dimsOf } from "../model/base.ts";
import { createModel } from "../model/load.ts";
import { modelFolder } from "../model/model_source.ts";
import { checkInteger, OptionError } from "../model/option_error.ts";
import { tokenStream } from "../model/pretrain_data.ts";
import { evaluationProgress, type Progress, silentProgress } from "../model/progress.ts";
import {
  type ClientRouting,
  generalistWeights,
  streamWords,
  tallyGates,
} from "../model/routing.ts";
import { StreamCapture } from "../model/stream_capture.ts";
import { tokenTexts } from "../model/token_texts.ts";
import { loadModelTokenizer } from "../model/tokenizer.ts";
import { METHOD_SPECS, METHODS } from "./methods.ts";
import type { TrainOptions } from "./options.ts";
import { readRunConfig } from "./run_folder.ts";
import { loadScenario } from "./scenarios.ts";

/** Test tokens read per client by default, from the start of its split. */
export const DEFAULT_MAX_TOKENS = 20_000;
/**
 * Tokens per client the HTML page shows by default, with their gates: 400 is about three windows
 * of the default --seq 128, a screenful or two of text per client, and keeps the page near 100 kB.
 */
export const DEFAULT_SHOWN_TOKENS = 400;

/** Everything the analysis needs, read and checked before any GPU work. */
export interface RoutingPlan {
  dir: string;
  options: TrainOptions;
  /** Blocks to report, in order. */
  layers: number[];
  maxTokens: number;
  /** Tokens per client kept with their gates for the page (the first of those analysed). */
  shownTokens: number;
  base: BaseCheckpoint;
  /** Per client, by id. */
  adapters: AdapterFile[];
}

/**
 * Reads and checks everything the analysis of the finished run in `dir` needs (before any GPU
 * work): its options, base model and every client's adapters. `layer`: report that block only.
 */
export async function planRouting(
  dir: string,
  { layer, maxTokens = DEFAULT_MAX_TOKENS, shownTokens = DEFAULT_SHOWN_TOKENS }: {
    layer?: number;
    maxTokens?: number;
    shownTokens?: number;
  } = {},
): Promise<RoutingPlan> {
  if (layer !== undefined) checkInteger("layer", layer, 0);
  checkInteger("maxTokens", maxTokens, 1);
  checkInteger("shownTokens", shownTokens, 1);
  const info = await Deno.stat(dir).catch(() => null);
  if (!info?.isDirectory) throw new OptionError("run", `${dir}: no such folder`);
  const options = await readRunConfig(dir);
  const spec = METHOD_SPECS[options.method];
  if (spec.frozen) {
    throw new Error(
      `${dir}: method "${options.method}" trains no adapters, so it has no routing to analyse`,
    );
  }
  if (spec.router === "uniform") {
    throw new Error(
      `${dir}: method "${options.method}" has no learned router (its router is frozen at zero, ` +
        `so every gate is the constant 1/E); routing needs one of ` +
        METHODS.filter((m) => !METHOD_SPECS[m].frozen && METHOD_SPECS[m].router !== "uniform")
          .join(", "),
    );
  }
  // A Hub model is pinned to its commit in config.json: the cached snapshot, no download.
  const base = await loadBaseCheckpoint(await modelFolder(options.model));
  const n = dimsOf(base.config).layers;
  if (layer !== undefined && layer >= n) {
    throw new OptionError(
      "layer",
      `must be an integer in 0..${n - 1} (the model's blocks), got ${layer}`,
    );
  }
  const adapters: AdapterFile[] = [];
  for (let id = 0; id < options.clients; id++) {
    const path = `${dir}/clients/${id}/adapters.safetensors`;
    if (!(await Deno.stat(path).catch(() => null))?.isFile) {
      throw new Error(
        `${path} is missing: the run has not finished (adapters are written after its last round)`,
      );
    }
    adapters.push(await loadAdapters(path, base.config));
  }
  const layers = layer === undefined ? [...Array(n).keys()] : [layer];
  return { dir, options, layers, maxTokens, shownTokens, base, adapters };
}

/**
 * Runs every client's adapted model over its test split and gathers its gates by word class;
 * keeps the first plan.shownTokens tokens' texts and generalist gates (not every gate: memory).
 */
export async function analyseRouting(
  engine: Engine,
  plan: RoutingPlan,
  progress: Progress = silentProgress(),
): Promise<ClientRouting[]> {
  const { options, base, layers, maxTokens } = plan;
  const { config, weights } = base;
  const tokenizer = await loadModelTokenizer(await modelFolder(options.model), config);
  const corpora = await loadScenario(options.scenario, {
    clients: options.clients,
    ood: options.ood,
    seed: options.seed,
  });
  const pieces = new Map<number, string>();
  const piece = (id: number) => {
    let text = pieces.get(id);
    if (text === undefined) pieces.set(id, text = tokenizer.decode([id]));
    return text;
  };
  const model = createModel(engine, config, weights);
  const results: ClientRouting[] = [];
  try {
    for (const [id, file] of plan.adapters.entries()) {
      const started = performance.now();
      // maxTokens inputs (the last token of a stream is only a target).
      const stream = tokenStream(tokenizer, corpora[id].test).subarray(0, maxTokens + 1);
      const adapters = new AdapterTensors(engine, config, file.config, file.values);
      let gates: Float32Array[];
      let capture: StreamCapture | undefined;
      try {
        capture = new StreamCapture(
          engine,
          config,
          stream,
          options.batch,
          options.seq,
          (tape, batch) => {
            const all = forwardAdapted(tape, model, adapters, batch).gates;
            return layers.map((l) => all[l]);
          },
        );
        gates = await capture.capture(
          evaluationProgress(
            progress,
            `client ${id} (${corpora[id].name}) test [${id + 1}/${plan.adapters.length}]`,
          ),
        );
      } finally {
        capture?.dispose();
        adapters.dispose();
      }
      const words = streamWords(Array.from(stream, piece), options.seq);
      const shown = Math.min(plan.shownTokens, words.length);
      results.push({
        client: id,
        name: corpora[id].name,
        tokens: words.length,
        layers: layers.map((l, k) => tallyGates(words, gates[k], file.config.experts[l], l)),
        shown: {
          texts: tokenTexts(tokenizer, stream.subarray(0, shown)),
          kinds: words.slice(0, shown).map((w) => w?.kind ?? null),
          generalist: layers.map((l, k) =>
            generalistWeights(gates[k], file.config.experts[l], shown)
          ),
        },
      });
      progress.log(
        `client ${id} (${corpora[id].name}): ${words.length} tokens in ` +
          `${((performance.now() - started) / 1000).toFixed(1)} s`,
      );
    }
  } finally {
    model.dispose();
  }
  return results;
}
