import { parameterCount } from "../../model/base.ts";
import { assertEquals, assertThrows } from "../assert.ts";
import {
  attentionBiases,
  type LlamaConfig,
  llamaConfigJson,
  llamaParameterShapes,
  parseLlamaConfig,
} from "../../model/llama_config.ts";
import { CheckpointError } from "../../model/safetensors.ts";

// config.json files as published on the Hub for four bases (keys transformers ignores included).
const SMOLLM2_135M = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 0,
  eos_token_id: 0,
  hidden_act: "silu",
  hidden_size: 576,
  initializer_range: 0.041666666666666664,
  intermediate_size: 1536,
  is_llama_config: true,
  max_position_embeddings: 8192,
  model_type: "llama",
  num_attention_heads: 9,
  num_hidden_layers: 30,
  num_key_value_heads: 3,
  pretraining_tp: 1,
  rms_norm_eps: 1e-05,
  rope_interleaved: false,
  rope_scaling: null,
  rope_theta: 100000,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  transformers_version: "4.40.1",
  use_cache: true,
  vocab_size: 49152,
};
const LLAMA_32_1B = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: 128001,
  head_dim: 64,
  hidden_act: "silu",
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 8192,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 16,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-05,
  rope_scaling: {
    factor: 32.0,
    high_freq_factor: 4.0,
    low_freq_factor: 1.0,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  },
  rope_theta: 500000.0,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  transformers_version: "4.45.0.dev0",
  use_cache: true,
  vocab_size: 128256,
};
const QWEN25_05B = {
  architectures: ["Qwen2ForCausalLM"],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151643,
  hidden_act: "silu",
  hidden_size: 896,
  initializer_range: 0.02,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 24,
  model_type: "qwen2",
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-06,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  transformers_version: "4.40.1",
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};
const TINYLLAMA_11B = {
  architectures: ["LlamaForCausalLM"],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: "silu",
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 5632,
  max_position_embeddings: 2048,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 22,
  num_key_value_heads: 4,
  pretraining_tp: 1,
  rms_norm_eps: 1e-05,
  rope_scaling: null,
  tie_word_embeddings: false,
  torch_dtype: "float32",
  transformers_version: "4.31.0.dev0",
  use_cache: true,
  vocab_size: 32000,
};

Deno.test("published configs parse and give the models' known parameter counts", () => {
  // The counts the models' cards and `sum(p.numel() for p in model.parameters())` give.
  const cases: [Record<string, unknown>, number][] = [
    [SMOLLM2_135M, 134_515_008],
    [LLAMA_32_1B, 1_235_814_400],
    [QWEN25_05B, 494_032_768],
    [TINYLLAMA_11B, 1_100_048_384],
  ];
  for (const [json, count] of cases) {
    assertEquals(parameterCount(parseLlamaConfig(json, "config.json")), count);
  }
});

Deno.test("Llama 3.2's config: GQA, head_dim, llama3 rope scaling, tied, token ids", () => {
  const config = parseLlamaConfig(LLAMA_32_1B, "config.json");
  assertEquals(config, {
    model_type: "llama",
    hidden_size: 2048,
    intermediate_size: 8192,
    num_hidden_layers: 16,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    head_dim: 64,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    rope_scaling: {
      rope_type: "llama3",
      factor: 32,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    },
    max_position_embeddings: 131072,
    vocab_size: 128256,
    tie_word_embeddings: true,
    attention_bias: false,
    bos_token_id: 128000,
    eos_token_id: 128001,
  });
  const shapes = llamaParameterShapes(config);
  assertEquals(shapes.get("model.layers.15.self_attn.k_proj.weight"), [512, 2048]);
  assertEquals(shapes.get("model.layers.0.self_attn.o_proj.weight"), [2048, 2048]);
  assertEquals(shapes.get("model.layers.0.mlp.down_proj.weight"), [2048, 8192]);
  assertEquals(shapes.has("lm_head.weight"), false);
  assertEquals(shapes.has("model.layers.0.self_attn.q_proj.bias"), false);
});

Deno.test("layouts: qwen2 biases q, k, v only; llama attention_bias biases all four", () => {
  const qwen = parseLlamaConfig({ ...QWEN25_05B, attention_bias: false }, "config.json");
  assertEquals(attentionBiases(qwen), { qkv: true, o: false });
  const qwenShapes = llamaParameterShapes(qwen);
  assertEquals(qwenShapes.get("model.layers.3.self_attn.k_proj.bias"), [128]);
  assertEquals(qwenShapes.has("model.layers.3.self_attn.o_proj.bias"), false);
  const biased = parseLlamaConfig({ ...TINYLLAMA_11B, attention_bias: true }, "config.json");
  const names = [...llamaParameterShapes(biased).keys()].filter((n) =>
    n.startsWith("model.layers.0.")
  );
  assertEquals(names, [
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.q_proj.bias",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.k_proj.bias",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.v_proj.bias",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.self_attn.o_proj.bias",
    "model.layers.0.post_attention_layernorm.weight",
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
  ]);
  assertEquals(llamaParameterShapes(biased).get("lm_head.weight"), [32000, 2048]);
});

Deno.test("omitted keys take transformers' defaults; one KV head is allowed", () => {
  const minimal = {
    model_type: "llama",
    hidden_size: 12,
    intermediate_size: 20,
    num_hidden_layers: 1,
    num_attention_heads: 3,
    vocab_size: 7,
  };
  const expected: LlamaConfig = {
    model_type: "llama",
    hidden_size: 12,
    intermediate_size: 20,
    num_hidden_layers: 1,
    num_attention_heads: 3,
    num_key_value_heads: 3,
    head_dim: 4,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    rope_scaling: null,
    max_position_embeddings: 2048,
    vocab_size: 7,
    tie_word_embeddings: false,
    attention_bias: false,
    bos_token_id: null,
    eos_token_id: null,
  };
  assertEquals(parseLlamaConfig(minimal, "c"), expected);
  assertEquals(
    parseLlamaConfig({ ...minimal, model_type: "qwen2" }, "c").max_position_embeddings,
    32768,
  );
  assertEquals(
    parseLlamaConfig({ ...minimal, num_key_value_heads: 1 }, "c").num_key_value_heads,
    1,
  );
  // transformers 5 writes rope settings as one rope_parameters object; "type" is rope_type's old name.
  const v5 = {
    ...minimal,
    rope_parameters: { ...LLAMA_32_1B.rope_scaling, rope_theta: 500000 },
  };
  assertEquals(
    parseLlamaConfig(v5, "c").rope_scaling,
    parseLlamaConfig(LLAMA_32_1B, "c").rope_scaling,
  );
  assertEquals(parseLlamaConfig(v5, "c").rope_theta, 500000);
  const plain = { ...minimal, rope_parameters: { rope_type: "default", rope_theta: 7 } };
  assertEquals(
    [parseLlamaConfig(plain, "c").rope_theta, parseLlamaConfig(plain, "c").rope_scaling],
    [
      7,
      null,
    ],
  );
  const oldName = {
    ...minimal,
    rope_scaling: { ...LLAMA_32_1B.rope_scaling, rope_type: undefined, type: "llama3" },
  };
  assertEquals(parseLlamaConfig(oldName, "c").rope_scaling?.factor, 32);
  assertEquals(parseLlamaConfig({ ...minimal, eos_token_id: [5, 6] }, "c").eos_token_id, 5);
  // An explicit head_dim need not be hidden_size / heads.
  const wide = parseLlamaConfig({ ...minimal, head_dim: 8, num_key_value_heads: 1 }, "c");
  assertEquals(llamaParameterShapes(wide).get("model.layers.0.self_attn.q_proj.weight"), [24, 12]);
  assertEquals(llamaParameterShapes(wide).get("model.layers.0.self_attn.o_proj.weight"), [12, 24]);
});

Deno.test("our config.json reads back to the same config", () => {
  for (const json of [SMOLLM2_135M, LLAMA_32_1B, QWEN25_05B, TINYLLAMA_11B]) {
    const config = parseLlamaConfig(json, "c");
    const written = JSON.parse(JSON.stringify(llamaConfigJson(config)));
    assertEquals(parseLlamaConfig(written, "c"), config);
  }
});

Deno.test("bad config.json values: one error naming the file and the field", () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ ...SMOLLM2_135M, model_type: "gpt_neox" }, 'model_type "gpt_neox" is not a Llama-family'],
    [{ ...SMOLLM2_135M, model_type: undefined }, "model_type undefined"],
    [{ ...SMOLLM2_135M, hidden_size: undefined }, "hidden_size is missing"],
    [
      { ...SMOLLM2_135M, num_hidden_layers: 0 },
      "num_hidden_layers must be a positive integer, got 0",
    ],
    [
      { ...SMOLLM2_135M, vocab_size: "49152" },
      'vocab_size must be a positive integer, got "49152"',
    ],
    [
      { ...SMOLLM2_135M, num_key_value_heads: 2 },
      "num_key_value_heads 2 does not divide num_attention_heads 9",
    ],
    [
      { ...SMOLLM2_135M, num_attention_heads: 7, num_key_value_heads: 7 },
      "hidden_size 576 is not divisible by num_attention_heads 7",
    ],
    [{ ...SMOLLM2_135M, head_dim: 63 }, "head_dim 63 must be even"],
    [{ ...SMOLLM2_135M, rms_norm_eps: 0 }, "rms_norm_eps must be a positive number"],
    [{ ...SMOLLM2_135M, rope_theta: -1 }, "rope_theta must be a positive number"],
    [{ ...SMOLLM2_135M, tie_word_embeddings: "yes" }, "tie_word_embeddings must be true or false"],
    [{ ...SMOLLM2_135M, hidden_act: "gelu" }, 'hidden_act "gelu" is not supported'],
    [{ ...SMOLLM2_135M, mlp_bias: true }, "mlp_bias true is not supported"],
    [{ ...QWEN25_05B, use_sliding_window: true }, "use_sliding_window true is not supported"],
    [
      { ...SMOLLM2_135M, rope_scaling: { type: "linear", factor: 2 } },
      'rope_scaling type "linear" is not supported',
    ],
    [
      { ...SMOLLM2_135M, rope_scaling: { rope_type: "yarn", factor: 4 } },
      'rope_scaling type "yarn"',
    ],
    [{ ...SMOLLM2_135M, rope_scaling: [] }, "rope_scaling must be an object or null"],
    [
      { ...LLAMA_32_1B, rope_scaling: { ...LLAMA_32_1B.rope_scaling, low_freq_factor: undefined } },
      "rope_scaling.low_freq_factor must be a positive number",
    ],
    [
      { ...LLAMA_32_1B, rope_scaling: { ...LLAMA_32_1B.rope_scaling, high_freq_factor: 1 } },
      "rope_scaling.high_freq_factor 1 must exceed low_freq_factor 1",
    ],
    [
      { ...SMOLLM2_135M, rope_parameters: { rope_type: "dynamic", factor: 2 } },
      'rope_parameters type "dynamic"',
    ],
    [{ ...SMOLLM2_135M, eos_token_id: -1 }, "eos_token_id must be a token id"],
  ];
  for (const [json, message] of cases) {
    assertThrows(
      () => parseLlamaConfig(json, "m/config.json"),
      CheckpointError,
      `m/config.json: ${message}`,
    );
  }
  assertThrows(() => parseLlamaConfig([], "m/config.json"), CheckpointError, "not a JSON object");
});
