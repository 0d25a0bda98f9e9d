// A real flower-superlink, the shipped ServerApp (FedAvg, started with `flwr run`) and three
// TypeScript nodes: the aggregate the ServerApp writes is checked exactly, the run options reach
// the nodes, and a node that sends an array beyond the shared ones stops the run (the Python
// side's assertion).
//
// Exactness: node i returns every tensor + v_i with num-examples n_i; n = 1, 1, 2 (weights 1/4,
// 1/4, 1/2) and v = 1, 2, 4 make every product and sum in Flower's float32 FedAvg exact, in any
// reply order, so each round adds exactly 2.75.

import { assert, assertEquals } from "../assert.ts";
import { readSafetensors } from "../../model/safetensors.ts";
import { flowerTest, initialArrays, NodeProcess, SuperLink } from "./harness.ts";

const SHIFT_PER_ROUND = 0.25 * 1 + 0.25 * 2 + 0.5 * 4;

flowerTest("flower: 3 TS nodes, FedAvg over the shared tensors, exact aggregate", async () => {
  const link = await SuperLink.start();
  const nodes: NodeProcess[] = [];
  try {
    const specs = [{ value: 1, examples: 1 }, { value: 2, examples: 1 }, { value: 4, examples: 2 }];
    for (const s of specs) {
      nodes.push(
        new NodeProcess([
          "--superlink",
          link.url,
          "--value",
          String(s.value),
          "--examples",
          String(s.examples),
        ]),
      );
    }
    const ids = await Promise.all(nodes.map((n) => n.nodeId()));
    const rounds = 3;
    const { runId, out } = await link.run(initialArrays(), {
      rounds,
      "min-nodes": 3,
      "eval-every": 2,
      "local-steps": 7,
      lr: 0.0005,
    });
    assertEquals(await link.waitFinished(runId, 120), "finished:completed");
    // One round (train, aggregate, evaluate, aggregate) with trivial node work, as a node sees
    // it: from receiving round 2's train message to receiving round 3's.
    const round2 = (await nodes[0].waitFor(/^task train 2 /)).at;
    const round3 = (await nodes[0].waitFor(/^task train 3 /)).at;
    console.log(`flower round overhead: ${((round3 - round2) / 1000).toFixed(2)} s per round`);

    const final = (await readSafetensors(`${out}/final.safetensors`)).tensors;
    assertEquals([...final.keys()].sort(), [...initialArrays().keys()].sort());
    for (const [name, t] of initialArrays()) {
      const want = t.data.map((x) => x + rounds * SHIFT_PER_ROUND);
      assertEquals(final.get(name)!.shape, t.shape);
      assertEquals(Array.from(final.get(name)!.data), Array.from(want), name);
    }

    const record = JSON.parse(await Deno.readTextFile(`${out}/result.json`)).rounds;
    // eval-every 2: evaluation in round 2 and at the end (round 3), as `deno task train` does.
    assertEquals(record.map((r: { round: number; phase: string }) => `${r.phase} ${r.round}`), [
      "train 1",
      "train 2",
      "evaluate 2",
      "train 3",
      "evaluate 3",
    ]);
    let sum = 0;
    for (const t of initialArrays().values()) for (const x of t.data) sum += x;
    for (const r of record) {
      assertEquals(r.replied, [...ids].sort());
      assertEquals(r.missing, []);
      if (r.phase === "train") assertEquals(r.metrics, { "train-value": SHIFT_PER_ROUND });
      else assertEquals(r.metrics, { "eval-sum": sum + 10 * r.round * SHIFT_PER_ROUND });
    }

    // The run options travel in every ConfigRecord: run config overrides and pyproject defaults.
    const config = JSON.parse((await nodes[0].waitFor(/^task train 2 (.*)$/))[1]);
    assertEquals(config["server-round"], 2);
    assertEquals(config["local-steps"], 7);
    assertEquals(config.lr, 0.0005);
    assertEquals(config.method, "comigs-1g1s");
    assertEquals(config["router-on-train"], false);
    assert(!("initial-arrays" in config), "the ServerApp's own options stay on the server");
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await link.stop();
  }
});

flowerTest(
  "flower: the ServerApp refuses a reply with an array beyond the shared ones",
  async () => {
    const link = await SuperLink.start();
    const nodes = [
      new NodeProcess(["--superlink", link.url]),
      new NodeProcess(["--superlink", link.url, "--extra-array"]),
    ];
    try {
      const leaker = await nodes[1].nodeId();
      await nodes[0].nodeId();
      const { runId, out } = await link.run(initialArrays(), { rounds: 1, "min-nodes": 2 });
      assertEquals(await link.waitFinished(runId, 120), "finished:failed");
      const log = await link.flwr("log", runId, "test", "--show");
      assert(
        log.includes(`node ${leaker} sent arrays that are not exactly this run's shared tensors`) &&
          log.includes("unexpected ['specialist.0']"),
        `ServerApp log lacks the refusal:\n${log}`,
      );
      let wrote = true;
      await Deno.stat(`${out}/final.safetensors`).catch(() => wrote = false);
      assert(!wrote, "a refused run must not write global tensors");
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
      await link.stop();
    }
  },
);
