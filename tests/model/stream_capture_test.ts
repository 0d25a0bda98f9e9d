// StreamCapture (model/stream_capture.ts) and StreamEvaluator (model/evaluate.ts) on the GPU:
// an embedding table whose row v is [v, v + 0.5] makes every captured row name the token it
// came from, so order, padding and batching mistakes show as wrong values, not as noise.
import type { Engine } from "../../engine/device.ts";
import { ShapeError } from "../../engine/errors.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { embedding } from "../../kernels/embedding.ts";
import type { GPT2Config } from "../../model/config.ts";
import { StreamEvaluator } from "../../model/evaluate.ts";
import { StreamCapture } from "../../model/stream_capture.ts";
import { assertEquals, assertThrows } from "../assert.ts";
import { gpuTest, Rng } from "../util.ts";

const TINY: GPT2Config = {
  n_layer: 1,
  n_head: 1,
  n_embd: 4,
  vocab_size: 37,
  n_positions: 8,
  layer_norm_epsilon: 1e-5,
};

// Awkward shapes: B·T not a multiple of the storage alignment, a partial last batch, a partial
// last window, a stream shorter than one window, a stream with no targets.
const SHAPES = [[23, 2, 5], [9, 3, 8], [50, 3, 7], [2, 1, 4], [1, 2, 4]];

/** Row v is [v, v + 0.5] (width 2) or [v] (width 1). */
const idTable = (engine: Engine, width: 1 | 2): Tensor =>
  engine.tensor([TINY.vocab_size, width], {
    data: Array.from({ length: TINY.vocab_size }, (_, v) => [v, v + 0.5].slice(0, width)).flat(),
    label: "id table",
  });

gpuTest("StreamCapture keeps every input position's row in stream order", async (engine) => {
  const table = idTable(engine, 2);
  for (const [length, B, T] of SHAPES) {
    const stream = Uint32Array.from(new Rng(length).int(length, TINY.vocab_size));
    const capture = new StreamCapture(
      engine,
      TINY,
      stream,
      B,
      T,
      (tape, batch) => [embedding(tape, table, batch.ids)],
    );
    const expected = Array.from(stream.subarray(0, -1), (v) => [v, v + 0.5]).flat();
    assertEquals(capture.positions, Math.max(0, length - 1));
    // Built once, captured twice: the second pass must not see the first's values.
    for (const pass of [1, 2]) {
      const [rows] = await capture.capture();
      assertEquals(Array.from(rows), expected, `stream ${length}, B=${B}, T=${T}, pass ${pass}`);
    }
    capture.dispose();
  }
  table.dispose();
});

gpuTest("StreamEvaluator's mean is over real targets only (padding excluded)", async (engine) => {
  // The "loss" of position p is its token id, so the mean over the stream's inputs is exact in
  // float64: a padded slot (id 0) counted would lower it.
  const table = idTable(engine, 1);
  for (const [length, B, T] of SHAPES.filter(([length]) => length > 1)) {
    const stream = Uint32Array.from(new Rng(length + 1).int(length, TINY.vocab_size));
    const evaluator = new StreamEvaluator(
      engine,
      TINY,
      stream,
      B,
      T,
      (tape, batch) => tape.reshape(embedding(tape, table, batch.ids), [B * T]),
    );
    const inputs = Array.from(stream.subarray(0, -1));
    const expected = inputs.reduce((a, b) => a + b, 0) / inputs.length;
    assertEquals(await evaluator.meanLoss(), expected, `stream ${length}, B=${B}, T=${T}`);
    evaluator.dispose();
  }
  table.dispose();
});

gpuTest("StreamCapture refuses a tensor without B·T rows", (engine) => {
  const table = idTable(engine, 2);
  assertThrows(
    () => new StreamCapture(engine, TINY, new Uint32Array(9), 2, 4, () => [table]),
    ShapeError,
    "is not [8] or [8, width]",
  );
  table.dispose();
  return Promise.resolve();
});
