import { assertEquals, assertRejects } from "../assert.ts";
import {
  type LlamaCheckpoint,
  loadLlamaCheckpoint,
  saveLlamaCheckpoint,
} from "../../model/llama_checkpoint.ts";
import {
  type LlamaConfig,
  llamaConfigJson,
  llamaParameterShapes,
  parseLlamaConfig,
} from "../../model/llama_config.ts";
import { CheckpointError, type NamedTensor } from "../../model/safetensors.ts";
import { Rng } from "../util.ts";
import { halfExactValues, type StoredDtype, writeHfModelFolder } from "./hf_files.ts";

/** Odd sizes, GQA with 1 < KV heads < heads. */
const tinyLlama = (extra: Record<string, unknown> = {}): LlamaConfig =>
  parseLlamaConfig({
    model_type: "llama",
    hidden_size: 12,
    intermediate_size: 10,
    num_hidden_layers: 2,
    num_attention_heads: 6,
    num_key_value_heads: 2,
    vocab_size: 13,
    max_position_embeddings: 16,
    ...extra,
  }, "tiny");

function randomCheckpoint(config: LlamaConfig, seed = 5): LlamaCheckpoint {
  const rng = new Rng(seed);
  const weights = new Map<string, Float32Array>();
  for (const [name, shape] of llamaParameterShapes(config)) {
    weights.set(name, halfExactValues(rng, shape.reduce((a, b) => a * b, 1)));
  }
  return { config, weights };
}

function hfTensors(checkpoint: LlamaCheckpoint): [string, NamedTensor][] {
  const shapes = llamaParameterShapes(checkpoint.config);
  return [...checkpoint.weights].map(([name, data]) => [name, { shape: shapes.get(name)!, data }]);
}

async function tempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("Llama checkpoints round-trip through our writer (tied, untied, qwen2)", async () => {
  for (
    const config of [
      tinyLlama(),
      tinyLlama({ tie_word_embeddings: true, attention_bias: true }),
      tinyLlama({ model_type: "qwen2", num_key_value_heads: 1 }),
    ]
  ) {
    await tempDir(async (dir) => {
      const checkpoint = randomCheckpoint(config);
      await saveLlamaCheckpoint(dir, checkpoint);
      assertEquals(await loadLlamaCheckpoint(dir), checkpoint);
      assertEquals(
        [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
        ["config.json", "model.safetensors"],
      );
    });
  }
});

Deno.test("the Hugging Face layout loads: one file or shards, F32, F16 or BF16", async () => {
  const cases: [StoredDtype, number, LlamaConfig][] = [
    ["F32", 1, tinyLlama()],
    ["BF16", 1, tinyLlama({ tie_word_embeddings: true })],
    ["F16", 1, tinyLlama({ model_type: "qwen2" })],
    ["BF16", 3, tinyLlama({ model_type: "qwen2", tie_word_embeddings: true })],
    ["F16", 2, tinyLlama({ attention_bias: true })],
  ];
  for (const [dtype, shards, config] of cases) {
    await tempDir(async (dir) => {
      const checkpoint = randomCheckpoint(config);
      await writeHfModelFolder(dir, llamaConfigJson(config), hfTensors(checkpoint), {
        dtype,
        shards,
      });
      assertEquals(await loadLlamaCheckpoint(dir), checkpoint, `${dtype} in ${shards} file(s)`);
    });
  }
});

Deno.test("ignored on load: rotary inv_freq buffers, an lm_head equal to tied embeddings", async () => {
  const config = tinyLlama({ tie_word_embeddings: true });
  const checkpoint = randomCheckpoint(config);
  const tensors = hfTensors(checkpoint);
  tensors.push(["lm_head.weight", {
    shape: [13, 12],
    data: checkpoint.weights.get("model.embed_tokens.weight")!,
  }]);
  for (let i = 0; i < 2; i++) {
    tensors.push([`model.layers.${i}.self_attn.rotary_emb.inv_freq`, {
      shape: [1],
      data: Float32Array.of(1),
    }]);
  }
  tensors.push(["model.rotary_emb.inv_freq", { shape: [1], data: Float32Array.of(1) }]);
  await tempDir(async (dir) => {
    await writeHfModelFolder(dir, llamaConfigJson(config), tensors, { dtype: "BF16", shards: 2 });
    assertEquals(await loadLlamaCheckpoint(dir), checkpoint);
  });
});

Deno.test("a checkpoint that does not match its config names every problem", async () => {
  const config = tinyLlama({ tie_word_embeddings: true });
  const checkpoint = randomCheckpoint(config);
  const tensors = hfTensors(checkpoint)
    .filter(([name]) => name !== "model.layers.1.mlp.up_proj.weight")
    .map(([name, t]): [string, NamedTensor] =>
      name === "model.layers.0.self_attn.k_proj.weight"
        ? [name, { shape: [3, 16], data: t.data.subarray(0, 48) }]
        : [name, t]
    );
  tensors.push(["model.layers.0.self_attn.q_proj.lora_A", {
    shape: [1],
    data: Float32Array.of(0),
  }]);
  tensors.push(["lm_head.weight", { shape: [13, 12], data: new Float32Array(156) }]);
  await tempDir(async (dir) => {
    await writeHfModelFolder(dir, llamaConfigJson(config), tensors, { shards: 2 });
    const error = await assertRejects(() => loadLlamaCheckpoint(dir), CheckpointError);
    for (
      const part of [
        `${dir}/model.safetensors.index.json: does not match the llama layout of its config.json`,
        "missing tensors: model.layers.1.mlp.up_proj.weight",
        "unexpected tensors: model.layers.0.self_attn.q_proj.lora_A",
        "model.layers.0.self_attn.k_proj.weight has shape [3,16], expected [4,12]",
        "lm_head.weight differs from model.embed_tokens.weight, but config.json says " +
        "tie_word_embeddings: true",
      ]
    ) {
      if (!error.message.includes(part)) throw new Error(`"${part}" not in: ${error.message}`);
    }
  });
});

Deno.test("an untied model without lm_head.weight is missing a tensor", async () => {
  const config = tinyLlama();
  const tensors = hfTensors(randomCheckpoint(config)).filter(([name]) => name !== "lm_head.weight");
  await tempDir(async (dir) => {
    await writeHfModelFolder(dir, llamaConfigJson(config), tensors, { dtype: "BF16" });
    await assertRejects(
      () => loadLlamaCheckpoint(dir),
      CheckpointError,
      `${dir}/model.safetensors: does not match the llama layout of its config.json:\n` +
        "  missing tensors: lm_head.weight",
    );
  });
});

Deno.test("sharded folders: a missing shard, a wrong index, no weights at all", async () => {
  const config = tinyLlama();
  const tensors = hfTensors(randomCheckpoint(config));
  await tempDir(async (dir) => {
    await writeHfModelFolder(dir, llamaConfigJson(config), tensors, { dtype: "BF16", shards: 3 });
    const index = `${dir}/model.safetensors.index.json`;
    const indexJson = JSON.parse(await Deno.readTextFile(index));

    await Deno.rename(`${dir}/model-00002-of-00003.safetensors`, `${dir}/moved`);
    await assertRejects(
      () => loadLlamaCheckpoint(dir),
      CheckpointError,
      `${index}: names shard model-00002-of-00003.safetensors (7 tensors, e.g. ` +
        `model.layers.0.mlp.gate_proj.weight), but ${dir}/model-00002-of-00003.safetensors ` +
        "is missing",
    );
    await Deno.rename(`${dir}/moved`, `${dir}/model-00002-of-00003.safetensors`);

    // A tensor listed under the wrong shard: neither side agrees with the index.
    const name = "model.norm.weight";
    await Deno.writeTextFile(
      index,
      JSON.stringify({
        weight_map: { ...indexJson.weight_map, [name]: "model-00001-of-00003.safetensors" },
      }),
    );
    const error = await assertRejects(() => loadLlamaCheckpoint(dir), CheckpointError);
    assertEquals(
      error.message,
      `${index}: disagrees with its shards:\n` +
        `  ${name} is mapped to model-00001-of-00003.safetensors, which does not hold it\n` +
        `  model-00003-of-00003.safetensors holds ${name}, which the index does not map to it`,
    );

    for (
      const [bad, message] of [
        ["{", "not valid JSON"],
        ["{}", 'has no "weight_map" object'],
        ['{"weight_map": {}}', "weight_map is empty"],
        [
          '{"weight_map": {"a": "../x.safetensors"}}',
          'weight_map["a"] is "../x.safetensors", not a .safetensors file name',
        ],
      ]
    ) {
      await Deno.writeTextFile(index, bad);
      await assertRejects(() => loadLlamaCheckpoint(dir), CheckpointError, `${index}: ${message}`);
    }

    await Deno.remove(index);
    await Deno.writeFile(`${dir}/pytorch_model.bin`, new Uint8Array(1));
    await assertRejects(
      () => loadLlamaCheckpoint(dir),
      CheckpointError,
      `${dir}: has neither model.safetensors nor model.safetensors.index.json ` +
        "(pytorch_model.bin is not read: convert it to safetensors)",
    );
  });
});

Deno.test("config problems surface before any weights are read", async () => {
  await tempDir(async (dir) => {
    await assertRejects(
      () => loadLlamaCheckpoint(dir),
      CheckpointError,
      "config.json: cannot read",
    );
    await Deno.writeTextFile(`${dir}/config.json`, "{");
    await assertRejects(() => loadLlamaCheckpoint(dir), CheckpointError, "not valid JSON");
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ model_type: "gpt2" }));
    await assertRejects(
      () => loadLlamaCheckpoint(dir),
      CheckpointError,
      `${dir}/config.json: model_type "gpt2" is not a Llama-family model`,
    );
  });
});

Deno.test("saving refuses weights that do not fit the layout", async () => {
  await tempDir(async (dir) => {
    const checkpoint = randomCheckpoint(tinyLlama());
    checkpoint.weights.set("model.norm.weight", new Float32Array(3));
    await assertRejects(
      () => saveLlamaCheckpoint(dir, checkpoint),
      CheckpointError,
      "cannot save: model.norm.weight needs 12 values of shape [12]",
    );
    const tied = randomCheckpoint(tinyLlama({ tie_word_embeddings: true }));
    tied.weights.set("lm_head.weight", new Float32Array(156));
    await assertRejects(
      () => saveLlamaCheckpoint(dir, tied),
      CheckpointError,
      "cannot save: not in the layout: lm_head.weight",
    );
  });
});
