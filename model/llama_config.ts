// Llama-family hyperparameters (model_type "llama" or "qwen2"), under the key names of Hugging Face's
// LlamaConfig / Qwen2Config, and the tensor layout those models save. Fields that config.json may
// omit take transformers' defaults; everything read is validated and each problem is named with
// the file and the field. Positional encoding: rotary, optionally with Llama 3's "llama3" scaling;
// other scalings (linear, dynamic, yarn, longrope) change the model and are refused.
import { CheckpointError } from "./safetensors.ts";

export type LlamaModelType = "llama" | "qwen2";

/** Llama 3.x's frequency-dependent RoPE scaling (transformers' `_compute_llama3_parameters`). */
export interface Llama3RopeScaling {
  rope_type: "llama3";
  factor: number;
  low_freq_factor: number;
  high_freq_factor: number;
  original_max_position_embeddings: number;
}

export interface LlamaConfig {
  model_type: LlamaModelType;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  /** Grouped-query attention: each KV head serves num_attention_heads / num_key_value_heads. */
  num_key_value_heads: number;
  head_dim: number;
  rms_norm_eps: number;
  rope_theta: number;
  rope_scaling: Llama3RopeScaling | null;
  max_position_embeddings: number;
  vocab_size: number;
  tie_word_embeddings: boolean;
  /** llama: biases on q, k, v and o. qwen2 ignores it (q, k, v always biased, o never). */
  attention_bias: boolean;
  bos_token_id: number | null;
  /** The first id when config.json lists several. */
  eos_token_id: number | null;
}

/** transformers' defaults for the keys a config.json may leave out, per model type. */
const DEFAULTS: Record<LlamaModelType, { rms_norm_eps: number; max_position_embeddings: number }> =
  {
    llama: { rms_norm_eps: 1e-6, max_position_embeddings: 2048 },
    qwen2: { rms_norm_eps: 1e-6, max_position_embeddings: 32768 },
  };
const DEFAULT_ROPE_THETA = 10000;
const ARCHITECTURES: Record<LlamaModelType, string> = {
  llama: "LlamaForCausalLM",
  qwen2: "Qwen2ForCausalLM",
};

/** Validates a parsed config.json; keys we do not use (Hugging Face writes many) are ignored. */
export function parseLlamaConfig(json: unknown, source: string): LlamaConfig {
  const fail = (message: string): never => {
    throw new CheckpointError(source, message);
  };
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    fail("config is not a JSON object");
  }
  const raw = json as Record<string, unknown>;
  const modelType = raw.model_type;
  if (modelType !== "llama" && modelType !== "qwen2") {
    fail(
      `model_type ${JSON.stringify(modelType)} is not a Llama-family model ` +
        `(supported: "llama", "qwen2")`,
    );
  }
  const type = modelType as LlamaModelType;
  const positiveInt = (key: string, fallback?: number): number => {
    const value = raw[key] ?? fallback;
    if (value === undefined) fail(`${key} is missing (a positive integer)`);
    if (!Number.isSafeInteger(value) || (value as number) < 1) {
      fail(`${key} must be a positive integer, got ${JSON.stringify(value)}`);
    }
    return value as number;
  };
  const positiveNumber = (key: string, fallback: number): number => {
    const value = raw[key] ?? fallback;
    if (typeof value !== "number" || !(value > 0) || !Number.isFinite(value)) {
      fail(`${key} must be a positive number, got ${JSON.stringify(value)}`);
    }
    return value as number;
  };
  const boolean = (key: string, fallback: boolean): boolean => {
    const value = raw[key] ?? fallback;
    if (typeof value !== "boolean") {
      fail(`${key} must be true or false, got ${JSON.stringify(value)}`);
    }
    return value as boolean;
  };
  const tokenId = (key: string): number | null => {
    const value = raw[key] ?? null;
    const first = Array.isArray(value) ? value[0] ?? null : value;
    if (first !== null && (!Number.isSafeInteger(first) || first < 0)) {
      fail(`${key} must be a token id (or a list of them), got ${JSON.stringify(value)}`);
    }
    return first as number | null;
  };

  const hidden = positiveInt("hidden_size");
  const heads = positiveInt("num_attention_heads");
  const kvHeads = positiveInt("num_key_value_heads", heads);
  if (heads % kvHeads !== 0) {
    fail(`num_key_value_heads ${kvHeads} does not divide num_attention_heads ${heads}`);
  }
  if (raw.head_dim == null && hidden % heads !== 0) {
    fail(
      `hidden_size ${hidden} is not divisible by num_attention_heads ${heads} (and no head_dim)`,
    );
  }
  const headDim = positiveInt("head_dim", hidden / heads);
  // Rotary embeddings turn pairs (x_i, x_{i + d/2}), so a head needs an even width.
  if (headDim % 2 !== 0) fail(`head_dim ${headDim} must be even for rotary position embeddings`);
  const act = raw.hidden_act ?? "silu";
  if (act !== "silu") fail(`hidden_act ${JSON.stringify(act)} is not supported (only "silu")`);
  if (boolean("mlp_bias", false)) {
    fail("mlp_bias true is not supported (no Llama-family base we load has MLP biases)");
  }
  if (type === "qwen2" && boolean("use_sliding_window", false)) {
    fail("use_sliding_window true is not supported (full causal attention only)");
  }
  const { rope_theta, rope_scaling } = parseRope(raw, fail);
  return {
    model_type: type,
    hidden_size: hidden,
    intermediate_size: positiveInt("intermediate_size"),
    num_hidden_layers: positiveInt("num_hidden_layers"),
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    rms_norm_eps: positiveNumber("rms_norm_eps", DEFAULTS[type].rms_norm_eps),
    rope_theta,
    rope_scaling,
    max_position_embeddings: positiveInt(
      "max_position_embeddings",
      DEFAULTS[type].max_position_embeddings,
    ),
    vocab_size: positiveInt("vocab_size"),
    tie_word_embeddings: boolean("tie_word_embeddings", false),
    attention_bias: boolean("attention_bias", false),
    bos_token_id: tokenId("bos_token_id"),
    eos_token_id: tokenId("eos_token_id"),
  };
}

/**
 * RoPE settings in either spelling transformers has written: `rope_theta` + `rope_scaling`
 * (4.x) or one `rope_parameters` object (5.x). Scaling `type` is the older name of `rope_type`.
 */
function parseRope(
  raw: Record<string, unknown>,
  fail: (message: string) => never,
): { rope_theta: number; rope_scaling: Llama3RopeScaling | null } {
  const params = raw.rope_parameters;
  const key = params === undefined || params === null ? "rope_scaling" : "rope_parameters";
  const scaling = key === "rope_parameters" ? params : raw.rope_scaling ?? null;
  const theta = key === "rope_parameters"
    ? (params as Record<string, unknown>).rope_theta ?? raw.rope_theta ?? DEFAULT_ROPE_THETA
    : raw.rope_theta ?? DEFAULT_ROPE_THETA;
  if (typeof theta !== "number" || !(theta > 0) || !Number.isFinite(theta)) {
    fail(`rope_theta must be a positive number, got ${JSON.stringify(theta)}`);
  }
  if (scaling === null) return { rope_theta: theta as number, rope_scaling: null };
  if (typeof scaling !== "object" || Array.isArray(scaling)) {
    fail(`${key} must be an object or null, got ${JSON.stringify(scaling)}`);
  }
  const s = scaling as Record<string, unknown>;
  const ropeType = s.rope_type ?? s.type ?? "default";
  if (ropeType === "default") return { rope_theta: theta as number, rope_scaling: null };
  if (ropeType !== "llama3") {
    fail(
      `${key} type ${JSON.stringify(ropeType)} is not supported ` +
        `(supported: none, "default", "llama3")`,
    );
  }
  const field = (name: string): number => {
    const value = s[name];
    if (typeof value !== "number" || !(value > 0) || !Number.isFinite(value)) {
      fail(`${key}.${name} must be a positive number, got ${JSON.stringify(value)}`);
    }
    return value as number;
  };
  const rope_scaling: Llama3RopeScaling = {
    rope_type: "llama3",
    factor: field("factor"),
    low_freq_factor: field("low_freq_factor"),
    high_freq_factor: field("high_freq_factor"),
    original_max_position_embeddings: field("original_max_position_embeddings"),
  };
  // transformers divides by (high - low) between the two wavelength bounds.
  if (!(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor)) {
    fail(
      `${key}.high_freq_factor ${rope_scaling.high_freq_factor} must exceed ` +
        `low_freq_factor ${rope_scaling.low_freq_factor}`,
    );
  }
  if (!Number.isSafeInteger(rope_scaling.original_max_position_embeddings)) {
    fail(`${key}.original_max_position_embeddings must be an integer`);
  }
  return { rope_theta: theta as number, rope_scaling };
}

/** Which attention projections carry a bias: qwen2 always q, k, v; llama per attention_bias. */
export function attentionBiases(config: LlamaConfig): { qkv: boolean; o: boolean } {
  return config.model_type === "qwen2"
    ? { qkv: true, o: false }
    : { qkv: config.attention_bias, o: config.attention_bias };
}

/**
 * Every parameter in the Hugging Face layout and its shape (nn.Linear weights are [out, in]);
 * `lm_head.weight` only when the embeddings are untied.
 */
export function llamaParameterShapes(config: LlamaConfig): Map<string, number[]> {
  const { hidden_size: C, intermediate_size: F, vocab_size: V, head_dim: D } = config;
  const q = config.num_attention_heads * D;
  const kv = config.num_key_value_heads * D;
  const bias = attentionBiases(config);
  const shapes = new Map<string, number[]>([["model.embed_tokens.weight", [V, C]]]);
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const layer = `model.layers.${i}`;
    shapes.set(`${layer}.input_layernorm.weight`, [C]);
    for (const [proj, out] of [["q_proj", q], ["k_proj", kv], ["v_proj", kv]] as const) {
      shapes.set(`${layer}.self_attn.${proj}.weight`, [out, C]);
      if (bias.qkv) shapes.set(`${layer}.self_attn.${proj}.bias`, [out]);
    }
    shapes.set(`${layer}.self_attn.o_proj.weight`, [C, q]);
    if (bias.o) shapes.set(`${layer}.self_attn.o_proj.bias`, [C]);
    shapes.set(`${layer}.post_attention_layernorm.weight`, [C]);
    shapes.set(`${layer}.mlp.gate_proj.weight`, [F, C]);
    shapes.set(`${layer}.mlp.up_proj.weight`, [F, C]);
    shapes.set(`${layer}.mlp.down_proj.weight`, [C, F]);
  }
  shapes.set("model.norm.weight", [C]);
  if (!config.tie_word_embeddings) shapes.set("lm_head.weight", [V, C]);
  return shapes;
}

/** The config.json transformers would write for this model (read back by parseLlamaConfig). */
export function llamaConfigJson(config: LlamaConfig): Record<string, unknown> {
  return {
    architectures: [ARCHITECTURES[config.model_type]],
    hidden_act: "silu",
    torch_dtype: "float32",
    ...config,
  };
}
