// GPT-2 124M itself fits the adapter's limits: its wte (50257×768 f32, 154 MB) exceeds one
// 128 MiB storage binding, so the embedding reads it in row blocks and the tied output layer's
// matmuls split it. No real weights exist here, so the checkpoint is a fresh init written in
// exactly Hugging Face's layout (`transformer.` prefix, a tied `lm_head.weight`, a mask buffer),
// loaded back, then run forward and backward on one short sequence.
import { assert, assertEquals } from "../assert.ts";
import { Tape } from "../../engine/tape.ts";
import { loadGpt2Checkpoint, saveGpt2Checkpoint } from "../../model/gpt2_checkpoint.ts";
import { type GPT2Config, parameterShapes } from "../../model/config.ts";
import { GPT2 } from "../../model/gpt2.ts";
import { TokenBatch } from "../../model/batch.ts";
import { initWeights } from "../../model/init.ts";
import { type NamedTensor, writeSafetensors } from "../../model/safetensors.ts";
import { assertClose, gpuTest } from "../util.ts";

const GPT2_124M: GPT2Config = {
  n_layer: 12,
  n_head: 12,
  n_embd: 768,
  vocab_size: 50257,
  n_positions: 1024,
  layer_norm_epsilon: 1e-5,
};
// One sequence of 64 tokens: a whole step at T = 1024 takes ~40 s on lavapipe.
const T = 64;
// wte's first row block ends at row 43690 (128 MiB / 3072 bytes per row): ids on both sides of
// it, repeated ids (their rows sum several positions) and the last row.
const FIXED_IDS = [0, 1, 43689, 43690, 43691, 50256, 50256, 7, 7, 7];

// Logits have variance ≈ 0.02²·768 ≈ 0.3 at this init, so the first loss is ln(V) + ~0.15.
const LOSS_SLACK = 0.5;
// wte.grad − (tied head's share) = the embedding's share. Entries of both shares reach ~0.1 and
// are f32 sums of ≤ 64 terms (GPU matmul; our float64 head from the GPU's f32 logits and hidden
// states), so the difference carries ~1e-8 of cancellation error (measured 7e-9). A missing
// or misplaced embedding share is ≥ 1e-3; a head share left in a row is ≥ 1e-5.
const EMBEDDING_GRAD_TOL = { atol: 1e-7, rtol: 1e-4 };
// Central difference in f32 on the GPU: the loss (≈ 10.9, ulp 1e-6) moves by 2·h·g ≈ 2e-4 for
// h = 1e-3; its rounding error of a few ulp gives ~2% of noise, the h² term ~0.1% (measured
// 0.15% apart).
const FD_STEP = 1e-3;
const FD_RTOL = 0.05;

/** Hugging Face's file: `transformer.` names, lm_head.weight tied to wte, a mask buffer. */
async function writeHuggingFaceLayout(dir: string, weights: Map<string, Float32Array>) {
  const shapes = parameterShapes(GPT2_124M);
  const tensors: [string, NamedTensor][] = [];
  for (const [name, data] of weights) {
    tensors.push([`transformer.${name}`, { shape: shapes.get(name)!, data }]);
  }
  tensors.push(["transformer.h.0.attn.masked_bias", { shape: [], data: new Float32Array([-1e4]) }]);
  tensors.push(["lm_head.weight", {
    shape: shapes.get("wte.weight")!,
    data: weights.get("wte.weight")!,
  }]);
  await writeSafetensors(`${dir}/model.safetensors`, tensors);
}

function sequence(): number[] {
  let state = 12345;
  const ids = [...FIXED_IDS];
  while (ids.length < T + 1) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    ids.push(state % GPT2_124M.vocab_size);
  }
  return ids;
}

/** The tied output layer's share of wte.grad row v: Σ_t (softmax(logits_t)_v − [v = y_t])/T·h_t. */
function headGradRow(
  v: number,
  probs: Float64Array[],
  targets: number[],
  hidden: Float32Array,
): Float64Array {
  const C = GPT2_124M.n_embd;
  const row = new Float64Array(C);
  for (let t = 0; t < T; t++) {
    const dlogit = (probs[t][v] - (targets[t] === v ? 1 : 0)) / T;
    for (let c = 0; c < C; c++) row[c] += dlogit * hidden[t * C + c];
  }
  return row;
}

function softmaxRows(logits: Float32Array, V: number): Float64Array[] {
  const rows: Float64Array[] = [];
  for (let t = 0; t < T; t++) {
    const row = new Float64Array(V);
    let max = -Infinity, sum = 0;
    for (let v = 0; v < V; v++) max = Math.max(max, logits[t * V + v]);
    for (let v = 0; v < V; v++) sum += row[v] = Math.exp(logits[t * V + v] - max);
    for (let v = 0; v < V; v++) row[v] /= sum;
    rows.push(row);
  }
  return rows;
}

function rowIsZero(data: Float32Array, row: number, cols: number): boolean {
  for (let c = 0; c < cols; c++) if (data[row * cols + c] !== 0) return false;
  return true;
}

gpuTest(
  "GPT-2 124M loads from Hugging Face's layout and runs forward and backward",
  async (engine) => {
    const dir = await Deno.makeTempDir({ prefix: "comigs-gpt2-124m-" });
    try {
      const { n_embd: C, vocab_size: V, n_positions: P } = GPT2_124M;
      const weights = initWeights(GPT2_124M, 124);
      // config.json (and a canonical file), then the file replaced by Hugging Face's layout.
      await saveGpt2Checkpoint(dir, { config: GPT2_124M, weights });
      await writeHuggingFaceLayout(dir, weights);
      const loaded = await loadGpt2Checkpoint(dir);
      assertEquals(loaded.config, GPT2_124M);
      assertEquals([...loaded.weights.keys()], [...weights.keys()]);
      for (const name of ["wte.weight", "h.11.mlp.c_proj.weight", "ln_f.weight"]) {
        assert(
          loaded.weights.get(name)!.every((x, i) => x === weights.get(name)![i]),
          `${name} read back differs`,
        );
      }

      const model = new GPT2(engine, loaded.config, loaded.weights);
      model.setTrainable(true);
      const batch = new TokenBatch(engine, GPT2_124M, 1, T);
      const ids = sequence();
      batch.set([ids]);
      const inputs = ids.slice(0, T), targets = ids.slice(1);
      const tape = new Tape(engine);
      const { loss, logits, hidden } = model.forward(tape, batch);
      const forward = tape.forward();
      // Gradients are created (zero) by backward: one run leaves exactly this batch's.
      await engine.run([...forward, ...tape.backward(loss)], "124M forward and backward");
      const lossValue = (await engine.readF32(loss))[0];
      assert(
        Math.abs(lossValue - Math.log(V)) <= LOSS_SLACK,
        `loss ${lossValue} vs ln(V) = ${Math.log(V)}`,
      );

      const grad = (name: string) => engine.readF32(model.param(name).grad!);
      const wteGrad = await grad("wte.weight"), wpeGrad = await grad("wpe.weight");
      assert(wteGrad.every(Number.isFinite), "wte.grad has non-finite values");
      assert(wpeGrad.every(Number.isFinite), "wpe.grad has non-finite values");
      // The tied head reaches every row of wte; the position embedding only rows 0..T−1.
      for (let v = 0; v < V; v++) assert(!rowIsZero(wteGrad, v, C), `wte.grad row ${v} is zero`);
      for (let p = 0; p < P; p++) {
        assertEquals(rowIsZero(wpeGrad, p, C), p >= T, `wpe.grad row ${p}`);
      }

      // Rows the embedding reached carry, beyond the head's share, the gradient of the input
      // embeddings at their positions, which (B = 1) is wpe.grad's row at that position.
      const probs = softmaxRows(await engine.readF32(logits), V);
      const hiddenValues = await engine.readF32(hidden);
      const sampled = new Set([...inputs, 2, 43688, 50255, 12345, 30000]);
      for (const v of sampled) {
        const head = headGradRow(v, probs, targets, hiddenValues);
        const embeddingShare = new Float64Array(C);
        inputs.forEach((id, t) => {
          if (id === v) { for (let c = 0; c < C; c++) embeddingShare[c] += wpeGrad[t * C + c]; }
        });
        const got = wteGrad.subarray(v * C, (v + 1) * C).map((g, c) => g - head[c]);
        assertClose(got, embeddingShare, EMBEDDING_GRAD_TOL, `wte.grad row ${v} minus head`);
      }

      // One element of the last block's residual bias, by central differences of the loss.
      const biasName = "h.11.mlp.c_proj.bias";
      const biasGrad = await grad(biasName);
      let j = 0;
      for (let c = 1; c < C; c++) if (Math.abs(biasGrad[c]) > Math.abs(biasGrad[j])) j = c;
      const bias = model.param(biasName);
      const lossWithBias = async (delta: number): Promise<number> => {
        const values = new Float32Array(C);
        values[j] = delta;
        engine.write(bias, values);
        await engine.run(forward, "124M forward");
        return (await engine.readF32(loss))[0];
      };
      const fd = ((await lossWithBias(FD_STEP)) - (await lossWithBias(-FD_STEP))) / (2 * FD_STEP);
      assert(
        Math.abs(fd - biasGrad[j]) <= FD_RTOL * Math.abs(biasGrad[j]),
        `${biasName}[${j}]: analytic ${biasGrad[j]}, finite difference ${fd}`,
      );

      tape.dispose();
      batch.dispose();
      model.dispose();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
