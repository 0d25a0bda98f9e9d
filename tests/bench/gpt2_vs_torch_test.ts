// bench/gpt2_vs_torch.ts: without torch it reports nothing and says why once; with torch
// (Debian's python3-torch; CI has none, so these are ignored there) bench/torch_gpt2_step.py
// computes the same full step and the same CoMiGS expert step as our engine on a small GPT-2,
// three AdamW steps from the same folder, within the bench's SAME_STEPS.
import { compareWithTorch, torchMissing, trainStepVsTorch } from "../../bench/gpt2_vs_torch.ts";
import type { GPT2Config } from "../../model/config.ts";
import { initWeights } from "../../model/init.ts";
import { assert, assertEquals } from "../assert.ts";
import { gpuTest, Rng, testEngine } from "../util.ts";

const PYTHON = "/usr/bin/python3";
const withoutTorch = await torchMissing(PYTHON);

Deno.test("torchMissing says why a Python cannot run the PyTorch side", async () => {
  const exits = await torchMissing("/bin/false");
  assert(exits?.includes("/bin/false cannot import torch (exit code 1)"), String(exits));
  const absent = await torchMissing("/nonexistent/python3");
  assert(absent?.startsWith("cannot run /nonexistent/python3 ("), String(absent));
});

Deno.test("without torch the comparison reports nothing and says so in one message", async () => {
  const engine = await testEngine();
  const messages: string[] = [];
  const error = console.error;
  console.error = (...args: unknown[]) => messages.push(args.join(" "));
  try {
    const records = await trainStepVsTorch(engine, { rounds: 1, steps: 1, python: "/bin/false" });
    assertEquals(records, []);
  } finally {
    console.error = error;
  }
  assertEquals(messages.length, 1);
  assert(messages[0].startsWith("train_step_vs_torch: skipped: /bin/false cannot import torch"));
  assert(messages[0].includes("apt-get install python3-torch"), messages[0]);
});

// Odd sizes: 3 heads of 16, a vocabulary of 101, 2 × 16 tokens.
const SMALL: GPT2Config = {
  n_layer: 2,
  n_head: 3,
  n_embd: 48,
  vocab_size: 101,
  n_positions: 16,
  layer_norm_epsilon: 1e-5,
};

/**
 * A fresh init with every bias and LayerNorm parameter drawn (the init's are 0 and 1, which
 * would hide a bias term computed wrongly) and the matrices 10× larger, so GELU sees inputs of
 * order 1, where its tanh approximation and the exact form differ.
 */
function weightsOfSmall(): Map<string, Float32Array> {
  const rng = new Rng(17);
  const weights = initWeights(SMALL, 1);
  for (const [name, data] of weights) {
    const ln = /(ln_\d|ln_f)\.weight$/.test(name);
    const drawn = name.endsWith(".bias") || ln ? rng.normal(data.length, 0.1) : null;
    for (let i = 0; i < data.length; i++) data[i] = drawn ? drawn[i] + (ln ? 1 : 0) : 10 * data[i];
  }
  return weights;
}

for (const step of ["full", "expert"] as const) {
  const name = `PyTorch's ${step} step equals ours over three AdamW steps`;
  if (withoutTorch) {
    Deno.test({ name, ignore: true, fn: () => {} });
    continue;
  }
  gpuTest(name, async (engine) => {
    const weights = weightsOfSmall();
    const spec = { config: `small-${step}`, step, model: SMALL, B: 2, T: 16, weights };
    const records = await compareWithTorch(engine, spec, { rounds: 1, steps: 1, python: PYTHON });
    assertEquals(records.map((r) => r.variant), ["engine", "torch-cpu"]);
    assert(records.every((r) => r.ok), JSON.stringify(records[0]));
  });
}
