import { assertEquals, assertRejects } from "../assert.ts";
import { loadBaseCheckpoint, saveBaseCheckpoint } from "../../model/checkpoint.ts";
import { parameterCount } from "../../model/base.ts";
import { type GPT2Config, parameterShapes } from "../../model/config.ts";
import { CheckpointError, type NamedTensor, writeSafetensors } from "../../model/safetensors.ts";
import { Rng } from "../util.ts";

const tiny: GPT2Config = {
  n_layer: 2,
  n_head: 3,
  n_embd: 6,
  vocab_size: 11,
  n_positions: 5,
  layer_norm_epsilon: 1e-5,
};

function randomWeights(config: GPT2Config): Map<string, Float32Array> {
  const rng = new Rng(3);
  return new Map(
    [...parameterShapes(config)].map((
      [name, shape],
    ) => [name, Float32Array.from(rng.normal(shape.reduce((a, b) => a * b)))]),
  );
}

/** Writes a folder the way Hugging Face's save_pretrained lays GPT-2 out, quirks included. */
async function writeHfFolder(
  dir: string,
  config: GPT2Config,
  tensors: [string, NamedTensor][],
): Promise<void> {
  await Deno.writeTextFile(
    `${dir}/config.json`,
    JSON.stringify({ ...config, model_type: "gpt2", activation_function: "gelu_new" }),
  );
  await writeSafetensors(`${dir}/model.safetensors`, tensors);
}

function hfTensors(weights: Map<string, Float32Array>, config: GPT2Config) {
  const shapes = parameterShapes(config);
  return [...weights].map(([name, data]): [string, NamedTensor] => [
    `transformer.${name}`,
    { shape: shapes.get(name)!, data },
  ]);
}

Deno.test("GPT-2 parameter count of the 124M config is 124,439,808", () => {
  const gpt2: GPT2Config = {
    n_layer: 12,
    n_head: 12,
    n_embd: 768,
    vocab_size: 50257,
    n_positions: 1024,
    layer_norm_epsilon: 1e-5,
  };
  assertEquals(parameterCount(gpt2), 124_439_808);
});

Deno.test("base checkpoints round-trip through our writer", async () => {
  const dir = await Deno.makeTempDir();
  const weights = randomWeights(tiny);
  await saveBaseCheckpoint(dir, { config: tiny, weights });
  const loaded = await loadBaseCheckpoint(dir);
  assertEquals(loaded.config, tiny);
  assertEquals(loaded.weights, weights);
});

Deno.test("Hugging Face layout loads: transformer. prefix, tied lm_head, mask buffers", async () => {
  const dir = await Deno.makeTempDir();
  const weights = randomWeights(tiny);
  const tensors = hfTensors(weights, tiny);
  tensors.push(["lm_head.weight", { shape: [11, 6], data: weights.get("wte.weight")! }]);
  for (let i = 0; i < tiny.n_layer; i++) {
    tensors.push([`transformer.h.${i}.attn.bias`, {
      shape: [1, 1, 5, 5],
      data: new Float32Array(25),
    }]);
    tensors.push([`transformer.h.${i}.attn.masked_bias`, {
      shape: [1],
      data: Float32Array.of(-1e4),
    }]);
  }
  await writeHfFolder(dir, tiny, tensors);
  assertEquals((await loadBaseCheckpoint(dir)).weights, weights);
});

Deno.test("a checkpoint that does not match its config names every problem", async () => {
  const dir = await Deno.makeTempDir();
  const weights = randomWeights(tiny);
  weights.delete("h.1.ln_2.bias");
  weights.set("h.0.mlp.c_fc.weight", new Float32Array(6 * 23));
  const tensors = hfTensors(weights, tiny).map(([name, t]): [string, NamedTensor] =>
    name.endsWith("c_fc.weight") && name.includes("h.0")
      ? [name, { shape: [6, 23], data: t.data }]
      : [name, t]
  );
  tensors.push(["transformer.h.7.extra", { shape: [1], data: Float32Array.of(0) }]);
  tensors.push(["lm_head.weight", { shape: [11, 6], data: new Float32Array(66) }]);
  await writeHfFolder(dir, tiny, tensors);
  const error = await assertRejects(() => loadBaseCheckpoint(dir), CheckpointError);
  for (
    const part of [
      "missing tensors: h.1.ln_2.bias",
      "unexpected tensors: transformer.h.7.extra",
      "h.0.mlp.c_fc.weight has shape [6,23], expected [6,24]",
      "lm_head.weight differs from wte.weight",
    ]
  ) {
    if (!error.message.includes(part)) throw new Error(`"${part}" not in: ${error.message}`);
  }
});

Deno.test("bad config.json values are rejected with the key named", async () => {
  const dir = await Deno.makeTempDir();
  for (
    const [config, message] of [
      [{ ...tiny, n_head: 4 }, "not divisible by n_head"],
      [{ ...tiny, n_layer: 0 }, "n_layer must be a positive integer"],
      [{ ...tiny, vocab_size: "big" }, "vocab_size must be a positive integer"],
      [{ ...tiny, layer_norm_epsilon: -1 }, "layer_norm_epsilon must be > 0"],
    ] as const
  ) {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
    await assertRejects(() => loadBaseCheckpoint(dir), CheckpointError, message);
  }
  await Deno.writeTextFile(`${dir}/config.json`, "{");
  await assertRejects(() => loadBaseCheckpoint(dir), CheckpointError, "not valid JSON");
  await assertRejects(() => loadBaseCheckpoint(`${dir}/nope`), CheckpointError, "cannot read");
});
