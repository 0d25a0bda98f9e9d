// GPT-2's hyperparameters, under the Hugging Face GPT2Config key names that config.json uses.
import { CheckpointError } from "./safetensors.ts";

export interface GPT2Config {
  n_layer: number;
  n_head: number;
  n_embd: number;
  vocab_size: number;
  n_positions: number;
  layer_norm_epsilon: number;
}

const INTEGER_KEYS = ["n_layer", "n_head", "n_embd", "vocab_size", "n_positions"] as const;

/** Validates a parsed config.json; unknown keys (Hugging Face writes many) are ignored. */
export function parseConfig(json: unknown, source: string): GPT2Config {
  const fail = (message: string): never => {
    throw new CheckpointError(source, message);
  };
  if (typeof json !== "object" || json === null) fail("config is not a JSON object");
  const raw = json as Record<string, unknown>;
  for (const key of INTEGER_KEYS) {
    const value = raw[key];
    if (!Number.isInteger(value) || (value as number) < 1) {
      fail(`${key} must be a positive integer, got ${JSON.stringify(value)}`);
    }
  }
  const eps = raw.layer_norm_epsilon ?? 1e-5;
  if (typeof eps !== "number" || !(eps > 0)) fail(`layer_norm_epsilon must be > 0, got ${eps}`);
  const config: GPT2Config = {
    n_layer: raw.n_layer as number,
    n_head: raw.n_head as number,
    n_embd: raw.n_embd as number,
    vocab_size: raw.vocab_size as number,
    n_positions: raw.n_positions as number,
    layer_norm_epsilon: eps as number,
  };
  if (config.n_embd % config.n_head !== 0) {
    fail(`n_embd ${config.n_embd} is not divisible by n_head ${config.n_head}`);
  }
  return config;
}

/** Every base tensor of the Hugging Face GPT-2 layout (canonical names) and its shape. */
export function parameterShapes(config: GPT2Config): Map<string, number[]> {
  const { n_layer: L, n_embd: C, vocab_size: V, n_positions: P } = config;
  const shapes = new Map<string, number[]>([["wte.weight", [V, C]], ["wpe.weight", [P, C]]]);
  for (let i = 0; i < L; i++) {
    const h = `h.${i}`;
    shapes.set(`${h}.ln_1.weight`, [C]);
    shapes.set(`${h}.ln_1.bias`, [C]);
    shapes.set(`${h}.attn.c_attn.weight`, [C, 3 * C]);
    shapes.set(`${h}.attn.c_attn.bias`, [3 * C]);
    shapes.set(`${h}.attn.c_proj.weight`, [C, C]);
    shapes.set(`${h}.attn.c_proj.bias`, [C]);
    shapes.set(`${h}.ln_2.weight`, [C]);
    shapes.set(`${h}.ln_2.bias`, [C]);
    shapes.set(`${h}.mlp.c_fc.weight`, [C, 4 * C]);
    shapes.set(`${h}.mlp.c_fc.bias`, [4 * C]);
    shapes.set(`${h}.mlp.c_proj.weight`, [4 * C, C]);
    shapes.set(`${h}.mlp.c_proj.bias`, [C]);
  }
  shapes.set("ln_f.weight", [C]);
  shapes.set("ln_f.bias", [C]);
  return shapes;
}
