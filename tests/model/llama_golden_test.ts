// The Llama family against PyTorch: forward, backward and AdamW training of our Llama against
// debug states written by plain float64 PyTorch as transformers computes LlamaForCausalLM and
// Qwen2ForCausalLM (scripts/golden_llama.py), on three odd-sized models: llama with GQA (6 heads,
// 2 KV heads), tied embeddings and llama3 rope scaling (F32); qwen2 with MQA, q/k/v biases,
// untied head (BF16); llama MHA with an explicit head_dim ≠ hidden/heads, biases everywhere (F16,
// sharded).
import { Tape, zeroGrad } from "../../engine/tape.ts";
import { TokenBatch } from "../../model/batch.ts";
import { Llama } from "../../model/llama.ts";
import { loadLlamaCheckpoint } from "../../model/llama_checkpoint.ts";
import { AdamW } from "../../model/optim.ts";
import { readSafetensors } from "../../model/safetensors.ts";
import { assertEquals } from "../assert.ts";
import { assertClose, gpuTest } from "../util.ts";

const GOLDEN = new URL("../golden/", import.meta.url).pathname;
const MODELS = ["llama-gqa-tiny", "qwen2-mqa-tiny", "llama-mha-tiny"];

// The GPT-2 golden test's tolerances and reasons (tests/model/gpt2_golden_test.ts): f32 against
// float64 through a comparable depth of ops; the script reports float32 PyTorch within 0.26 of
// them on these models.
const LOGITS_TOL = { atol: 1e-5, rtol: 1e-5 };
const GRAD_TOL = { atol: 2e-7, rtol: 1e-4 };
const TRAIN_TOL = { atol: 5e-5, rtol: 0 };

async function setup(name: string) {
  const dir = `${GOLDEN}${name}`;
  const { config, weights } = await loadLlamaCheckpoint(dir);
  const tokens: number[][] = JSON.parse(await Deno.readTextFile(`${dir}/tokens.json`));
  const debug = await readSafetensors(`${dir}/debug.safetensors`);
  return { config, weights, tokens, debug };
}

for (const name of MODELS) {
  gpuTest(
    `${name}: loss, logits and every gradient match PyTorch's debug state`,
    async (engine) => {
      const { config, weights, tokens, debug } = await setup(name);
      const model = new Llama(engine, config, weights);
      model.setTrainable(true);
      const batch = new TokenBatch(engine, config, tokens.length, tokens[0].length - 1);
      batch.set(tokens);
      const tape = new Tape(engine);
      const { loss, logits } = model.forward(tape, batch);
      await engine.run([...tape.forward(), ...tape.backward(loss)]);
      const ref = (key: string) => debug.tensors.get(key)!.data;
      assertClose(await engine.readF32(loss), ref("loss"), LOGITS_TOL, "loss");
      assertClose(await engine.readF32(logits), ref("logits"), LOGITS_TOL, "logits");
      const gradients = [...debug.tensors.keys()].filter((k) => k.startsWith("grad.")).sort();
      assertEquals(gradients, [...model.params.keys()].map((p) => `grad.${p}`).sort());
      for (const [param, tensor] of model.params) {
        assertClose(await engine.readF32(tensor.grad!), ref(`grad.${param}`), GRAD_TOL, param);
      }
      tape.dispose();
      batch.dispose();
      model.dispose();
    },
  );

  gpuTest(`${name}: reproduces PyTorch's first 10 AdamW losses`, async (engine) => {
    const { config, weights, tokens, debug } = await setup(name);
    const hyper = debug.metadata;
    const model = new Llama(engine, config, weights);
    model.setTrainable(true);
    const params = [...model.params.values()];
    const batch = new TokenBatch(engine, config, tokens.length, tokens[0].length - 1);
    batch.set(tokens);
    const tape = new Tape(engine);
    const { loss } = model.forward(tape, batch);
    const forward = tape.forward();
    const backward = tape.backward(loss);
    const opt = new AdamW(engine, params, {
      lr: Number(hyper.lr),
      betas: [Number(hyper.beta1), Number(hyper.beta2)],
      eps: Number(hyper.eps),
      weightDecay: Number(hyper.weight_decay),
    });
    const losses: number[] = [];
    for (let step = 0; step < Number(hyper.steps); step++) {
      await engine.run([...zeroGrad(params), ...forward, ...backward, ...opt.step()]);
      losses.push((await engine.readF32(loss))[0]);
    }
    assertClose(losses, debug.tensors.get("train_losses")!.data, TRAIN_TOL, "AdamW losses");
    opt.dispose();
    tape.dispose();
    batch.dispose();
    model.dispose();
  });
}
