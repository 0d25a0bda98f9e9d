// The llm.c discipline: our GPT-2 forward, backward and AdamW training against a debug state
// written by plain PyTorch in float64 (scripts/golden_gpt2.py), on an odd-sized config
// (2 layers, 3 heads of 12, vocab 101, 3 sequences of 13 tokens).
import { AdamW } from "../../model/optim.ts";
import { Tape, zeroGrad } from "../../engine/tape.ts";
import { loadGpt2Checkpoint } from "../../model/gpt2_checkpoint.ts";
import { GPT2 } from "../../model/gpt2.ts";
import { TokenBatch } from "../../model/batch.ts";
import { readSafetensors } from "../../model/safetensors.ts";
import { assertClose, gpuTest } from "../util.ts";

const GOLDEN = new URL("../golden/gpt2-tiny", import.meta.url).pathname;

// The reference is float64; we compute in f32. Logits and loss come out of ~8 chained f32 ops
// with sums over at most 144 terms: relative error ~1e-6, so 1e-5 leaves ~10× margin.
// Gradients pass through twice as many ops, and small entries suffer cancellation: absolute
// slack relative to the largest gradient entries (~1e-2 here) plus 1e-4 relative.
const LOGITS_TOL = { atol: 1e-5, rtol: 1e-5 };
const GRAD_TOL = { atol: 2e-7, rtol: 1e-4 };
// Ten AdamW steps amplify f32 rounding in the updates (lr·m̂/√v̂ is ~lr whatever |g|): the
// losses agree to ~1e-6 relative at step 1 and drift to ~1e-5 by step 10.
const TRAIN_TOL = { atol: 5e-5, rtol: 0 };

async function setup() {
  const { config, weights } = await loadGpt2Checkpoint(GOLDEN);
  const tokens: number[][] = JSON.parse(await Deno.readTextFile(`${GOLDEN}/tokens.json`));
  const debug = await readSafetensors(`${GOLDEN}/debug.safetensors`);
  return { config, weights, tokens, debug };
}

gpuTest("GPT-2 loss, logits and every gradient match PyTorch's debug state", async (engine) => {
  const { config, weights, tokens, debug } = await setup();
  const model = new GPT2(engine, config, weights);
  model.setTrainable(true);
  const batch = new TokenBatch(engine, config, tokens.length, tokens[0].length - 1);
  batch.set(tokens);
  const tape = new Tape(engine);
  const { loss, logits } = model.forward(tape, batch);
  await engine.run([...tape.forward(), ...tape.backward(loss)]);
  const ref = (name: string) => debug.tensors.get(name)!.data;
  assertClose(await engine.readF32(loss), ref("loss"), LOGITS_TOL, "loss");
  assertClose(await engine.readF32(logits), ref("logits"), LOGITS_TOL, "logits");
  for (const [name, param] of model.params) {
    assertClose(await engine.readF32(param.grad!), ref(`grad.${name}`), GRAD_TOL, `grad.${name}`);
  }
  tape.dispose();
  batch.dispose();
  model.dispose();
});

gpuTest("GPT-2 reproduces PyTorch's first 10 AdamW losses", async (engine) => {
  const { config, weights, tokens, debug } = await setup();
  const hyper = debug.metadata;
  const model = new GPT2(engine, config, weights);
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
