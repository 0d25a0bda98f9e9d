// `deno task generate`: continues a prompt with a base model (model/generate.ts), streaming the
// text as it comes.
import { startEngine } from "./engine.ts";
import { loadBaseCheckpoint } from "../model/checkpoint.ts";
import {
  checkGenerateOptions,
  contextLength,
  generate,
  GENERATE_DEFAULTS,
  type GenerateOptions,
} from "../model/generate.ts";
import { dimsOf } from "../model/base.ts";
import { createModel } from "../model/load.ts";
import { hubProgress, modelFolder } from "../model/model_source.ts";
import { loadModelTokenizer } from "../model/tokenizer.ts";
import {
  type Flags,
  type FlagSpec,
  helpText,
  numberFlag,
  parseFlags,
  runMain,
  UsageError,
  withFlags,
} from "./args.ts";

const USAGE = 'deno task generate --model DIR --prompt "TEXT" [--max-tokens N] ' +
  "[--temperature T] [--top-k K] [--seed S]";
const FLAGS: FlagSpec = {
  model: {
    type: "string",
    help: "base model: a folder (config.json + weights + tokenizer) or hf:ORG/NAME[@REVISION]",
  },
  prompt: { type: "string", help: "the text to continue (non-empty)" },
  "max-tokens": { type: "string", help: "tokens to generate: an integer ≥ 0 (default 64)" },
  temperature: { type: "string", help: "a number ≥ 0; 0 = greedy (default 1.0)" },
  "top-k": {
    type: "string",
    help: "sample among the K likeliest: an integer ≥ 0; 0 = off (default 40)",
  },
  seed: { type: "string", help: "random seed: an integer in 0..4294967295 (default 0)" },
  help: { type: "boolean", help: "show this help" },
};

/** The generation options from the flags (defaults for those not given), checked. */
function parseOptions(flags: Flags): GenerateOptions {
  const options = {
    maxTokens: numberFlag(flags, "max-tokens", "integer") ?? GENERATE_DEFAULTS.maxTokens,
    temperature: numberFlag(flags, "temperature") ?? GENERATE_DEFAULTS.temperature,
    topK: numberFlag(flags, "top-k", "integer") ?? GENERATE_DEFAULTS.topK,
    seed: numberFlag(flags, "seed", "integer") ?? GENERATE_DEFAULTS.seed,
  };
  withFlags(FLAGS, () => checkGenerateOptions(options));
  return options;
}

async function writeAll(text: string): Promise<void> {
  const bytes = new TextEncoder().encode(text);
  for (let done = 0; done < bytes.length;) done += await Deno.stdout.write(bytes.subarray(done));
}

async function main(): Promise<void> {
  const flags = parseFlags(Deno.args, FLAGS, USAGE);
  if (flags.help) return console.log(helpText(FLAGS, USAGE));
  for (const name of ["model", "prompt"]) {
    if (typeof flags[name] !== "string") {
      throw new UsageError(`--${name} is required\n\n${helpText(FLAGS, USAGE)}`);
    }
  }
  const prompt = flags.prompt as string;
  if (prompt === "") throw new UsageError("--prompt must be non-empty text");
  const options = parseOptions(flags);
  const modelDir = await modelFolder(
    flags.model as string,
    hubProgress(flags.model as string, console),
  );
  const { config, weights } = await loadBaseCheckpoint(modelDir);
  const tokenizer = await loadModelTokenizer(modelDir, config);
  // The prompt first, dimmed on a terminal, so the continuation reads on from it.
  await writeAll(Deno.stdout.isTerminal() ? `\x1b[2m${prompt}\x1b[0m` : prompt);
  if (options.maxTokens === 0) return await writeAll("\n");

  const engine = await startEngine();
  const model = createModel(engine, config, weights); // frozen: inference only
  const started = performance.now();
  for await (const token of generate(engine, model, tokenizer, prompt, options)) {
    await writeAll(token.text);
  }
  await writeAll("\n");
  const seconds = (performance.now() - started) / 1000;
  const context = contextLength(
    dimsOf(config).context,
    tokenizer.encode(prompt).length,
    options.maxTokens,
  );
  console.error(
    `${options.maxTokens} tokens in ${seconds.toFixed(2)} s ` +
      `(${(options.maxTokens / seconds).toFixed(1)} tokens/s; context ${context})`,
  );
  model.dispose();
}

if (import.meta.main) await runMain(main, FLAGS);
