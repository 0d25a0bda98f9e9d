// A federated run on a Llama-family base (a small random Llama with a real Hugging Face
// tokenizer): CoMiGS with different numbers of experts per client writes interfaces.md's outputs
// in the Llama layout, only the attention LoRA and the generalist leave a client (the global file
// holds nothing else, and every client ends holding it), and a run stopped after a round and
// resumed ends with the same bits as an uninterrupted one.
import { join } from "node:path";
import { ProgressBar } from "../../cli/progress.ts";
import { RunStopped, runTraining } from "../../fed/run.ts";
import { adapterRole, loadAdapters } from "../../model/adapters.ts";
import { readConfig } from "../../model/checkpoint.ts";
import { readSafetensors } from "../../model/safetensors.ts";
import { assert, assertEquals, assertRejects, assertSameFile } from "../assert.ts";
import { writeTinyLlama } from "../model/tiny_llama.ts";
import { gpuTest } from "../util.ts";
import { corpora, options } from "./tiny_run.ts";

const quiet = () => new ProgressBar(0, 0, false, () => {});

gpuTest(
  "CoMiGS on a Llama base: the Llama layout out, only shared tensors leave",
  async (engine) => {
    const dir = await Deno.makeTempDir();
    const model = join(dir, "llama");
    await writeTinyLlama(model);
    const out = join(dir, "run");
    const { summary } = await runTraining(
      engine,
      { options: { ...options(out, "comigs-1gxs"), model } },
      { progress: quiet(), corpora: corpora() },
    );
    for (const c of summary.clients) assert(Number.isFinite(c.test_ppl), JSON.stringify(c));
    assert(summary.mean_test_ppl < summary.pretrained_mean_test_ppl, "training did not help");
    const base = await readConfig(model);
    const global = await readSafetensors(join(out, "global.safetensors"));
    const names = [...global.tensors.keys()];
    assertEquals(names.length, 2 * (4 * 2 + 3 * 2)); // per block: q, k, v, o and gate, up, down
    for (const name of names) {
      assert(name.startsWith("model.layers."), name);
      assert(["attention", "generalist"].includes(adapterRole(name)), `${name} in global`);
    }
    for (const [id, experts] of [[0, 1], [1, 3]]) {
      const { config, values } = await loadAdapters(
        join(out, "clients", String(id), "adapters.safetensors"),
        base,
      );
      assertEquals(config.experts, [experts, experts]);
      assertEquals(values.has("model.layers.1.mlp.router.weight"), experts > 1);
      for (const [name, t] of global.tensors) {
        assertEquals([...values.get(name)!], [...t.data], `client ${id} ${name}`);
      }
    }
    await Deno.remove(dir, { recursive: true });
  },
);

gpuTest("a Llama run stopped after round 1 and resumed ends bit-identical", async (engine) => {
  const dir = await Deno.makeTempDir();
  const model = join(dir, "llama");
  await writeTinyLlama(model);
  const run = (out: string, stopAfterRound?: number) =>
    runTraining(engine, { options: { ...options(join(dir, out), "comigs-1g1s", 3), model } }, {
      progress: quiet(),
      corpora: corpora(),
      stopAfterRound,
    });
  const full = await run("whole");
  await assertRejects(() => run("split", 1), RunStopped);
  const resumed = await runTraining(engine, { resume: join(dir, "split") }, {
    progress: quiet(),
    corpora: corpora(),
  });
  assertEquals(resumed.summary.clients, full.summary.clients);
  for (const file of ["clients/0/adapters.safetensors", "global.safetensors"]) {
    await assertSameFile(join(dir, "split", file), join(dir, "whole", file));
  }
  await Deno.remove(dir, { recursive: true });
});
