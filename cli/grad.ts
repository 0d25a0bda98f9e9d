// `deno task grad`: the debug state of interfaces.md — loss, logits and the gradient of every
// trainable tensor for one batch, as safetensors, for checking us against other implementations.
import { startEngine } from "./engine.ts";
import { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { adapterShapes, AdapterTensors, loadAdapters } from "../model/adapters.ts";
import { loadBaseCheckpoint } from "../model/checkpoint.ts";
import { forwardAdapted } from "../model/comigs.ts";
import { type BaseConfig, baseParameterShapes, dimsOf } from "../model/base.ts";
import { createModel } from "../model/load.ts";
import { hubProgress, modelFolder } from "../model/model_source.ts";
import { TokenBatch } from "../model/batch.ts";
import { type NamedTensor, writeSafetensors } from "../model/safetensors.ts";
import { type FlagSpec, helpText, parseFlags, runMain, UsageError } from "./args.ts";

const USAGE =
  "deno task grad --model DIR [--adapters FILE] --tokens FILE.json --out FILE.safetensors";
const FLAGS: FlagSpec = {
  model: { type: "string", help: "base model: a folder or hf:ORG/NAME[@REVISION]" },
  adapters: {
    type: "string",
    help: "adapters.safetensors: its tensors become the trainable ones, the base stays frozen",
  },
  tokens: { type: "string", help: "JSON array of B sequences of T+1 token ids" },
  out: { type: "string", help: "where to write the debug state (safetensors, F32)" },
  help: { type: "boolean", help: "show this help" },
};

/** Reads and validates the --tokens file against the model's config. */
export async function readTokenFile(path: string, config: BaseConfig): Promise<number[][]> {
  const { context, vocab } = dimsOf(config);
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new UsageError(`--tokens ${path}: cannot read JSON (${(e as Error).message})`);
  }
  const fail = (message: string): never => {
    throw new UsageError(`--tokens ${path}: ${message}`);
  };
  if (!Array.isArray(json) || json.length === 0) fail("must be a non-empty JSON array of arrays");
  const sequences = json as unknown[];
  const length = Array.isArray(sequences[0]) ? sequences[0].length : -1;
  if (length < 2) fail("each sequence needs at least 2 token ids (T+1 with T ≥ 1)");
  if (length - 1 > context) {
    fail(`sequences of ${length} ids give T=${length - 1} > the model's context ${context}`);
  }
  sequences.forEach((s, b) => {
    if (!Array.isArray(s) || s.length !== length) {
      fail(`sequence ${b} does not have ${length} ids like sequence 0`);
    }
    (s as unknown[]).forEach((id, t) => {
      if (!Number.isInteger(id) || (id as number) < 0 || (id as number) >= vocab) {
        fail(`sequence ${b}, position ${t}: ${id} is not a token id below ${vocab}`);
      }
    });
  });
  return sequences as number[][];
}

async function main(): Promise<void> {
  const flags = parseFlags(Deno.args, FLAGS, USAGE);
  if (flags.help) return console.log(helpText(FLAGS, USAGE));
  for (const name of ["model", "tokens", "out"]) {
    if (typeof flags[name] !== "string") {
      throw new UsageError(`--${name} is required\n\n${helpText(FLAGS, USAGE)}`);
    }
  }
  const spec = flags.model as string;
  const { config, weights } = await loadBaseCheckpoint(
    await modelFolder(spec, hubProgress(spec, console)),
  );
  const sequences = await readTokenFile(flags.tokens as string, config);
  const adapterFile = typeof flags.adapters === "string"
    ? await loadAdapters(flags.adapters, config)
    : undefined;
  const engine = await startEngine();
  const model = createModel(engine, config, weights);
  const B = sequences.length, T = sequences[0].length - 1;
  const batch = new TokenBatch(engine, config, B, T);
  batch.set(sequences);
  const tape = new Tape(engine);
  let output: { loss: Tensor; lb?: Tensor; logits: Tensor };
  let gradients: () => Promise<Map<string, Float32Array>>;
  if (adapterFile) {
    const adapters = new AdapterTensors(engine, config, adapterFile.config, adapterFile.values);
    for (const p of [...adapters.loraParams(), ...adapters.routerParams()]) p.requiresGrad = true;
    output = forwardAdapted(tape, model, adapters, batch);
    gradients = () => adapters.gradients();
  } else {
    model.setTrainable(true);
    output = model.forward(tape, batch);
    gradients = async () => {
      const grads = new Map<string, Float32Array>();
      for (const [name, p] of model.params) grads.set(name, await engine.readF32(p.grad!));
      return grads;
    };
  }
  await engine.run([...tape.forward(), ...tape.backward(output.loss)], "grad");
  const tensors: [string, NamedTensor][] = [
    ["loss", { shape: [1], data: await engine.readF32(output.loss) }],
    ["lb_loss", {
      shape: [1],
      data: output.lb ? await engine.readF32(output.lb) : new Float32Array(1),
    }],
    ["logits", { shape: [B, T, dimsOf(config).vocab], data: await engine.readF32(output.logits) }],
  ];
  const shapes = adapterFile
    ? adapterShapes(config, adapterFile.config)
    : baseParameterShapes(config);
  for (const [name, data] of await gradients()) {
    tensors.push([`grad.${name}`, { shape: shapes.get(name)!, data }]);
  }
  await writeSafetensors(flags.out as string, tensors);
  console.error(`loss ${tensors[0][1].data[0].toFixed(6)}; wrote ${flags.out}`);
}

if (import.meta.main) await runMain(main);
