// A Llama run that adapts only the query and value projections (`--lora-targets q,v`), stopped
// after its first round and resumed: config.json records the choice (and the resumed run keeps
// it), every client's adapters file and the global hold LoRA on q and v only (its metadata says
// so), both moved from their zero start, and the run lowers the test perplexity.
import { join } from "node:path";
import { ProgressBar } from "../../cli/progress.ts";
import { RunStopped, runTraining } from "../../fed/run.ts";
import { resolveTrainOptions } from "../../fed/options.ts";
import { loadAdapters } from "../../model/adapters.ts";
import { readConfig } from "../../model/checkpoint.ts";
import { readSafetensors } from "../../model/safetensors.ts";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { writeTinyLlama } from "../model/tiny_llama.ts";
import { gpuTest } from "../util.ts";
import { corpora, options } from "./tiny_run.ts";

const quiet = () => new ProgressBar(0, 0, false, () => {});

/** The attention names of one block holding LoRA on `projections`. */
const attention = (block: number, projections: string[]) =>
  projections.flatMap((p) =>
    ["lora_A", "lora_B"].map((leaf) => `model.layers.${block}.self_attn.${p}_proj.${leaf}`)
  );

gpuTest("a Llama run with --lora-targets q,v adapts q and v only, resumed too", async (engine) => {
  const dir = await Deno.makeTempDir();
  const model = join(dir, "llama");
  await writeTinyLlama(model);
  const out = join(dir, "run");
  const start = resolveTrainOptions({
    ...options(out, "comigs-1g1s"),
    model,
    loraTargets: ["v", "q"],
  });
  const hooks = { progress: quiet(), corpora: corpora() };
  await assertRejects(
    () => runTraining(engine, { options: start }, { ...hooks, stopAfterRound: 1 }),
    RunStopped,
  );
  const saved = () => Deno.readTextFile(join(out, "config.json")).then(JSON.parse);
  assertEquals((await saved()).loraTargets, ["q_proj", "v_proj"]);
  const { summary } = await runTraining(engine, { resume: out }, hooks);
  assertEquals((await saved()).loraTargets, ["q_proj", "v_proj"]);
  assert(summary.mean_test_ppl < summary.pretrained_mean_test_ppl, "training did not help");

  const qv = [0, 1].flatMap((block) => attention(block, ["q", "v"]));
  const global = await readSafetensors(join(out, "global.safetensors"));
  assertEquals([...global.tensors.keys()].filter((n) => n.includes(".self_attn.")), qv);
  const base = await readConfig(model);
  for (const id of [0, 1]) {
    const file = join(out, "clients", String(id), "adapters.safetensors");
    const { config, values } = await loadAdapters(file, base);
    assertEquals(config.targets, ["q_proj", "v_proj"]);
    assertEquals([...values.keys()].filter((n) => n.includes(".self_attn.")), qv);
    // lora_B starts at zero: a nonzero one was trained.
    for (const name of qv.filter((n) => n.endsWith("lora_B"))) {
      assert(values.get(name)!.some((x) => x !== 0), `client ${id}: ${name} never trained`);
    }
  }
  await Deno.remove(dir, { recursive: true });
});
