// `deno task routing --run DIR`: how a finished training run's clients route function words and
// content words (method.md §5: "in the first layer, function words route to the generalist").
// Each client's adapted model (the run's frozen base + that client's adapters) reads the
// client's test split as the trainer evaluates it (the same scenario load, tokenizer, windows of
// --seq in batches of --batch); every block's gate is captured and averaged over whole-word
// tokens by class (model/routing.ts). Writes DIR/routing.md (also printed) and DIR/routing.json.
//
// Methods without a learned router (fedavg, local, centralized) are refused: their router is
// frozen at zero, so every gate is the constant 1/E and there is nothing to analyse.
import { join } from "node:path";
import { Engine } from "../engine/device.ts";
import { METHOD_SPECS, METHODS } from "../fed/methods.ts";
import type { TrainOptions } from "../fed/federation.ts";
import { loadScenario } from "../fed/scenarios.ts";
import { type AdapterFile, AdapterTensors, loadAdapters } from "../model/adapters.ts";
import { type BaseCheckpoint, loadBaseCheckpoint } from "../model/checkpoint.ts";
import { forwardAdapted } from "../model/comigs.ts";
import { GPT2 } from "../model/gpt2.ts";
import { tokenStream } from "../model/pretrain_data.ts";
import {
  type ClientRouting,
  routingJson,
  routingMarkdown,
  type RoutingMeta,
  streamWords,
  tallyGates,
} from "../model/routing.ts";
import { writeFileAtomic } from "../model/safetensors.ts";
import { StreamCapture } from "../model/stream_capture.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { type FlagSpec, helpText, parseFlags, runMain, UsageError } from "./args.ts";

const DEFAULT_MAX_TOKENS = 20_000;
const USAGE = "deno task routing --run DIR [--layer L] [--max-tokens N]";
const FLAGS: FlagSpec = {
  run: {
    type: "string",
    help: "a finished run folder of `deno task train` (config.json, clients/<id>/adapters)",
  },
  layer: { type: "string", help: "report only block L (0-based; default: every block)" },
  "max-tokens": {
    type: "string",
    help:
      `test tokens read per client, from the start of its split (default ${DEFAULT_MAX_TOKENS})`,
  },
  help: { type: "boolean", help: "show this help" },
};

/** Everything the analysis needs, read and checked before any GPU work. */
export interface RoutingPlan {
  dir: string;
  options: TrainOptions;
  /** Blocks to report, in order. */
  layers: number[];
  maxTokens: number;
  base: BaseCheckpoint;
  /** Per client, by id. */
  adapters: AdapterFile[];
}

export async function planRouting(args: string[]): Promise<{ help: true } | { plan: RoutingPlan }> {
  const flags = parseFlags(args, FLAGS, USAGE);
  if (flags.help) return { help: true };
  const dir = flags.run;
  if (typeof dir !== "string") {
    throw new UsageError(`--run is required\n\n${helpText(FLAGS, USAGE)}`);
  }
  const integer = (flag: string, min: number): number | undefined => {
    const raw = flags[flag] as string | undefined;
    if (raw === undefined) return undefined;
    if (!/^\d+$/.test(raw) || Number(raw) < min) {
      throw new UsageError(`--${flag} must be an integer ≥ ${min}, got "${raw}"`);
    }
    return Number(raw);
  };
  const layer = integer("layer", 0);
  const maxTokens = integer("max-tokens", 1) ?? DEFAULT_MAX_TOKENS;

  const info = await Deno.stat(dir).catch(() => null);
  if (!info?.isDirectory) throw new UsageError(`--run ${dir}: no such folder`);
  const options = await readOptions(join(dir, "config.json"));
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
  const base = await loadBaseCheckpoint(options.model);
  const n = base.config.n_layer;
  if (layer !== undefined && layer >= n) {
    throw new UsageError(
      `--layer must be an integer in 0..${n - 1} (the model's blocks), got ${layer}`,
    );
  }
  const adapters: AdapterFile[] = [];
  for (let id = 0; id < options.clients; id++) {
    const path = join(dir, "clients", String(id), "adapters.safetensors");
    if (!(await Deno.stat(path).catch(() => null))?.isFile) {
      throw new Error(
        `${path} is missing: the run has not finished (adapters are written after its last round)`,
      );
    }
    adapters.push(await loadAdapters(path, base.config));
  }
  const layers = layer === undefined ? [...Array(n).keys()] : [layer];
  return { plan: { dir, options, layers, maxTokens, base, adapters } };
}

/** The run's config.json, with the fields this tool reads checked. */
async function readOptions(path: string): Promise<TrainOptions> {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new Error(`${path}: cannot read a run's config (${(e as Error).message})`);
  }
  if (typeof json !== "object" || json === null) {
    throw new Error(`${path}: not a training run's config (not a JSON object)`);
  }
  const bad = [
    ...["method", "scenario", "model"].filter((key) => typeof json[key] !== "string"),
    ...["clients", "batch", "seq", "seed"].filter((key) => !Number.isInteger(json[key])),
    ...(typeof json.ood === "boolean" ? [] : ["ood"]),
  ];
  if (bad.length) {
    throw new Error(`${path}: not a training run's config (bad or missing: ${bad.join(", ")})`);
  }
  if (!(METHODS as readonly string[]).includes(json.method as string)) {
    throw new Error(`${path}: unknown method "${json.method}"`);
  }
  return json as unknown as TrainOptions;
}

/** Runs every client's adapted model over its test split and gathers its gates by word class. */
export async function analyseRouting(
  engine: Engine,
  plan: RoutingPlan,
  log: (line: string) => void = () => {},
): Promise<ClientRouting[]> {
  const { options, base, layers, maxTokens } = plan;
  const { config, weights } = base;
  const tokenizer = await loadTokenizer(options.model, config.vocab_size);
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
  const model = new GPT2(engine, config, weights);
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
        gates = await capture.capture();
      } finally {
        capture?.dispose();
        adapters.dispose();
      }
      const words = streamWords(Array.from(stream, piece), options.seq);
      results.push({
        client: id,
        name: corpora[id].name,
        tokens: words.length,
        layers: layers.map((l, k) => tallyGates(words, gates[k], file.config.experts[l], l)),
      });
      log(
        `client ${id} (${corpora[id].name}): ${words.length} tokens in ` +
          `${((performance.now() - started) / 1000).toFixed(1)} s`,
      );
    }
  } finally {
    model.dispose();
  }
  return results;
}

async function main(): Promise<void> {
  const invocation = await planRouting(Deno.args);
  if ("help" in invocation) return console.log(helpText(FLAGS, USAGE));
  const { plan } = invocation;
  const engine = await Engine.create();
  const clients = await analyseRouting(engine, plan, (line) => console.error(line));
  const { options } = plan;
  const meta: RoutingMeta = {
    run: plan.dir,
    method: options.method,
    scenario: options.scenario,
    ood: options.ood,
    seed: options.seed,
    seq: options.seq,
    maxTokens: plan.maxTokens,
  };
  const markdown = routingMarkdown(meta, clients);
  const encode = (text: string) => new TextEncoder().encode(text);
  await writeFileAtomic(join(plan.dir, "routing.md"), encode(markdown));
  await writeFileAtomic(
    join(plan.dir, "routing.json"),
    encode(JSON.stringify(routingJson(meta, clients), null, 2) + "\n"),
  );
  console.log(markdown);
}

if (import.meta.main) await runMain(main);
