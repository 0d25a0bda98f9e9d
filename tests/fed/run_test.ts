// A whole federated run, tiny (the shipped base model, short documents, 2×16-token batches):
// every method of method.md §4 runs through the trainer; a CoMiGS run writes interfaces.md's
// outputs (config, metrics, summary, per-client adapters, the global tensors), its clients end
// holding the server's average as their generalist; and a run stopped after a round and resumed
// ends with the same bits as an uninterrupted one.
import { join } from "node:path";
import { ProgressBar } from "../../cli/progress.ts";
import { METHODS } from "../../fed/methods.ts";
import { RunStopped, runTraining } from "../../fed/run.ts";
import { adapterRole, loadAdapters } from "../../model/adapters.ts";
import { dimsOf } from "../../model/base.ts";
import { readConfig } from "../../model/checkpoint.ts";
import { readSafetensors } from "../../model/safetensors.ts";
import { assert, assertEquals, assertRejects, assertSameFile } from "../assert.ts";
import { gpuTest } from "../util.ts";
import { corpora, MODEL, options } from "./tiny_run.ts";

const quiet = () => new ProgressBar(0, 0, false, () => {});

gpuTest(
  "every method of method.md's table trains and reports from the same trainer",
  async (engine) => {
    const dir = await Deno.makeTempDir();
    for (const method of METHODS) {
      const out = join(dir, method);
      const { summary } = await runTraining(engine, { options: options(out, method, 1) }, {
        progress: quiet(),
        corpora: corpora(),
      });
      assertEquals(summary.method, method);
      assertEquals(summary.clients.map((c) => c.name), ["numbers", "words"]);
      for (const c of summary.clients) {
        assert(
          Number.isFinite(c.test_ppl) && c.test_ppl > 1,
          method,
        );
      }
      if (method === "pretrained") {
        assertEquals(
          summary.mean_test_ppl,
          summary.pretrained_mean_test_ppl,
        );
      } else {assert(
          summary.mean_test_ppl !== summary.pretrained_mean_test_ppl,
          `${method} did not train`,
        );}
      const clientDirs = method === "pretrained"
        ? []
        : method === "centralized"
        ? ["0"]
        : ["0", "1"];
      for (const id of clientDirs) {
        await Deno.stat(
          join(out, "clients", id, "adapters.safetensors"),
        );
      }
    }
    await Deno.remove(dir, { recursive: true });
  },
);

gpuTest(
  "a CoMiGS run writes interfaces.md's outputs; clients end with the server's generalist",
  async (engine) => {
    const out = await Deno.makeTempDir();
    const opts = options(out, "comigs-1gxs");
    const { summary } = await runTraining(engine, { options: opts }, {
      progress: quiet(),
      corpora: corpora(),
    });
    assertEquals(JSON.parse(await Deno.readTextFile(join(out, "config.json"))), opts);
    const metrics = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n").map((
      l,
    ) => JSON.parse(l));
    for (const m of metrics) {
      assertEquals(Object.keys(m), ["round", "step", "client", "split", "loss", "ppl", "wall_s"]);
    }
    const tests = metrics.filter((m) => m.split === "test");
    // Test split of each client before training (round 0, step 0) and after every round.
    assertEquals(tests.map((m) => [m.round, m.client, m.step]), [
      [0, 0, 0],
      [0, 1, 0],
      [1, 0, 2],
      [1, 1, 2],
      [2, 0, 4],
      [2, 1, 4],
    ]);
    assertEquals(Object.keys(summary), [
      "method",
      "scenario",
      "ood",
      "seed",
      "base_model",
      "clients",
      "mean_test_ppl",
      "pretrained_mean_test_ppl",
    ]);
    assertEquals(JSON.parse(await Deno.readTextFile(join(out, "summary.json"))), summary);
    assertEquals(summary.clients.map((c) => c.n_experts), [1, 3]);
    const base = await readConfig(MODEL);
    const global = await readSafetensors(join(out, "global.safetensors"));
    for (const name of global.tensors.keys()) {
      assert(["attention", "generalist"].includes(adapterRole(name)), `${name} in global`);
    }
    for (const id of [0, 1]) {
      const { config, values } = await loadAdapters(
        join(out, "clients", String(id), "adapters.safetensors"),
        base,
      );
      assertEquals(config.experts, new Array(dimsOf(base).layers).fill([1, 3][id]));
      for (const [name, t] of global.tensors) {
        assertEquals([...values.get(name)!], [...t.data], `client ${id} ${name}`);
      }
    }
    await Deno.remove(out, { recursive: true });
  },
);

gpuTest(
  "a run stopped after round 1 and resumed ends bit-identical to an uninterrupted run",
  async (engine) => {
    // CoMiGS (a server average) and PCL (a server bundle, personal mixes on the clients).
    for (const method of ["comigs-1g1s", "pcl"] as const) {
      const dir = await Deno.makeTempDir();
      const [whole, split] = [join(dir, "whole"), join(dir, "split")];
      const full = await runTraining(engine, { options: options(whole, method, 3) }, {
        progress: quiet(),
        corpora: corpora(),
      });
      await assertRejects(
        () =>
          runTraining(engine, { options: options(split, method, 3) }, {
            progress: quiet(),
            corpora: corpora(),
            stopAfterRound: 1,
          }),
        RunStopped,
      );
      const resumed = await runTraining(engine, { resume: split }, {
        progress: quiet(),
        corpora: corpora(),
      });
      assertEquals(resumed.summary.clients, full.summary.clients);
      const files = ["clients/0/adapters.safetensors", "clients/1/adapters.safetensors"];
      // PCL has no global model to write.
      if (method === "comigs-1g1s") files.push("global.safetensors");
      else await assertRejects(() => Deno.stat(join(whole, "global.safetensors")));
      for (const file of files) {
        await assertSameFile(join(whole, file), join(split, file), method);
      }
      const strip = (text: string) =>
        text.trim().split("\n").map((l) => ({ ...JSON.parse(l), wall_s: 0 }));
      assertEquals(
        strip(await Deno.readTextFile(join(split, "metrics.jsonl"))),
        strip(await Deno.readTextFile(join(whole, "metrics.jsonl"))),
      );
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest(
  "--train-tokens keeps the first tokens of a client's split; fewer than a window is refused",
  async (engine) => {
    const dir = await Deno.makeTempDir();
    const run = (name: string, trainTokens: (number | null)[]) =>
      runTraining(engine, { options: { ...options(join(dir, name), "local", 1), trainTokens } }, {
        progress: quiet(),
        corpora: corpora(),
      });
    const whole = await run("whole", [null, null]);
    const low = await run("low", [40, null]);
    assertEquals(low.summary.clients.map((c) => c.train_tokens), [
      40,
      whole.summary.clients[1].train_tokens,
    ]);
    assert(whole.summary.clients[0].train_tokens > 40);
    // Client 1 is untouched; client 0 trained on other batches.
    assertEquals(low.summary.clients[1].test_ppl, whole.summary.clients[1].test_ppl);
    assert(low.summary.clients[0].test_ppl !== whole.summary.clients[0].test_ppl);
    await assertRejects(
      () => run("tiny", [16, null]),
      RangeError,
      "trainTokens leaves client 0 16 training tokens, fewer than one window of 16 + 1",
    );
    await Deno.remove(dir, { recursive: true });
  },
);

gpuTest(
  "--eval-every N evaluates before training, every N rounds and after the last",
  async (engine) => {
    const out = await Deno.makeTempDir();
    const { summary } = await runTraining(
      engine,
      { options: { ...options(out, "local", 3), localSteps: 1, evalEvery: 2 } },
      { progress: quiet(), corpora: corpora() },
    );
    const metrics = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l));
    const tests = metrics.filter((m) => m.split === "test");
    assertEquals(tests.map((m) => [m.round, m.client]), [[0, 0], [0, 1], [2, 0], [2, 1], [3, 0], [
      3,
      1,
    ]]);
    assertEquals(metrics.filter((m) => m.split === "train").map((m) => m.round), [
      1,
      1,
      2,
      2,
      3,
      3,
    ]);
    assertEquals(summary.clients.map((c) => c.test_ppl), tests.slice(-2).map((m) => m.ppl));
    await Deno.remove(out, { recursive: true });
  },
);

gpuTest(
  "how often a run evaluates leaves its training bits as they are",
  async (engine) => {
    const dir = await Deno.makeTempDir();
    const run = (name: string, evalEvery: number) =>
      runTraining(
        engine,
        { options: { ...options(join(dir, name), "comigs-1g1s", 3), evalEvery } },
        {
          progress: quiet(),
          corpora: corpora(),
        },
      );
    const [often, rarely] = [await run("often", 1), await run("rarely", 3)];
    assertEquals(rarely.summary.clients, often.summary.clients);
    for (const file of ["clients/0/adapters.safetensors", "clients/1/adapters.safetensors"]) {
      await assertSameFile(join(dir, "often", file), join(dir, "rarely", file));
    }
    await Deno.remove(dir, { recursive: true });
  },
);
