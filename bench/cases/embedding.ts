import type { BenchCase } from "../case.ts";
import { embedding, IndexInput, splitRows } from "../../kernels/embedding.ts";
import type { Engine } from "../../engine/device.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { Tape } from "../../engine/tape.ts";
import { embeddingBackwardRef, embeddingRef } from "../../tests/ref/embedding.ts";
import { assertClose, f32, Rng } from "../../tests/util.ts";

/** Rows `rows` of a [V, C] tensor, gathered by row copies (reading back 154 MB takes seconds). */
async function readRows(engine: Engine, tensor: Tensor, rows: number[]): Promise<Float32Array> {
  const cols = tensor.shape[1];
  const gathered = engine.tensor([rows.length, cols], { label: "gathered rows" });
  await engine.run(rows.map((row, k) => ({
    kind: "copy" as const,
    label: "gather row",
    src: engine.view(tensor, row * cols, [cols]),
    dst: engine.view(gathered, k * cols, [cols]),
  })));
  const values = await engine.readF32(gathered);
  gathered.dispose();
  return values;
}

// GPT-2 124M (wte 50257×768, split over two bindings) and the reference config, both at 1024
// tokens. One run is the lookup and the scatter-add of its gradient into the leaf table.
export const cases: BenchCase[] = [[50257, 768], [8192, 256]].map(([vocab, cols]) => ({
  kernel: "embedding",
  variant: "storage",
  shape: { n: 1024, rows: vocab, cols },
  setup: (engine) => {
    const count = 1024;
    const rng = new Rng(vocab);
    const ids = rng.int(count, vocab);
    const doutData = f32(rng.uniform(count * cols));
    const table = engine.tensor([vocab, cols], { label: "wte" });
    table.requiresGrad = true;
    // Only the rows looked up need values (the rest stay zero): writing 154 MB is slow here.
    const distinct = [...new Set(ids)].sort((a, b) => a - b);
    const slot = new Map(distinct.map((id, k) => [id, k]));
    const rowData = f32(rng.uniform(distinct.length * cols));
    distinct.forEach((id, k) =>
      engine.write(
        engine.view(table, id * cols, [cols]),
        rowData.subarray(k * cols, (k + 1) * cols),
      )
    );
    const blocks = splitRows(engine, table);
    const input = new IndexInput(engine, count, vocab);
    input.set(ids);
    const dout = engine.tensor([count, cols], { data: doutData, label: "dout" });
    const tape = new Tape(engine);
    const out = embedding(tape, blocks, input);
    const slotIds = Array.from(ids, (id) => slot.get(id)!);
    return Promise.resolve({
      commands: [...tape.forward(), ...tape.backward(out, dout)],
      check: async () => {
        try {
          // The lookup is a copy (exact); each gradient row sums ≤ a few f32 values.
          assertClose(await engine.readF32(out), embeddingRef(rowData, slotIds, cols), {
            atol: 0,
            rtol: 0,
          }, "out");
          assertClose(
            await readRows(engine, table.grad!, distinct),
            embeddingBackwardRef(doutData, slotIds, distinct.length, cols),
            { atol: 1e-6, rtol: 1e-6 },
            "dtable",
          );
          return true;
        } catch {
          return false;
        }
      },
      // Forward: ids, the rows read, out written. Backward: dout read, the index (count,
      // distinct ids, N+1 starts, N positions), and each distinct row read and written.
      bytes: 4 * (count + 2 * count * cols + count * cols + (1 + 3 * count + 1) +
        2 * distinct.length * cols),
      dispose: () => {
        tape.dispose();
        input.dispose();
        for (const t of [table, dout, ...blocks]) t.dispose();
      },
    });
  },
}));
