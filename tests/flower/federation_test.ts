// A real flower-superlink, the shipped ServerApp (started with `flwr run`) and three trivial
// TypeScript nodes (test_node.ts): the ServerApp's phases (query, evaluation before training,
// train/evaluate rounds with eval-every), its aggregate equal bit for bit to fed/aggregate.ts's
// (float64 in client order, token claims capped, whatever order the replies arrive in), and the
// run options reaching the nodes. guard_test.ts has the ServerApp's refusals of bad replies.

import { assert, assertEquals } from "../assert.ts";
import {
  assertFinal,
  flowerTest,
  NodeProcess,
  SuperLink,
  TRIVIAL_RUN,
  trivialReference,
} from "./harness.ts";

flowerTest("flower: 3 TS nodes, the ServerApp's phases, an aggregate equal to ours", async () => {
  const link = await SuperLink.start();
  const nodes: NodeProcess[] = [];
  try {
    // Token claims 3, 40, 1000: the upper median (40) caps the last one, as fed/aggregate.ts does.
    const specs = [
      { value: 0.1, examples: 40 },
      { value: -0.7, examples: 1000 },
      { value: 0.3, examples: 3 },
    ];
    for (const [client, s] of specs.entries()) {
      nodes.push(
        new NodeProcess([
          "--superlink",
          link.url,
          "--client",
          String(client),
          `--value=${s.value}`,
          "--examples",
          String(s.examples),
        ]),
      );
    }
    const ids = await Promise.all(nodes.map((n) => n.nodeId()));
    const rounds = 3;
    const { runId, out } = await link.run({
      ...TRIVIAL_RUN,
      rounds,
      "min-nodes": 3,
      "eval-every": 2,
      "local-steps": 7,
      lr: 0.0005,
      aggregation: "tokens",
    });
    assertEquals(await link.waitFinished(runId, 120), "finished:completed");
    // One round (train, aggregate, evaluate, aggregate) with trivial node work, as a node sees
    // it: from receiving round 2's train message to receiving round 3's.
    const round2 = (await nodes[0].waitFor(/^task train 2 /)).at;
    const round3 = (await nodes[0].waitFor(/^task train 3 /)).at;
    console.log(`flower round overhead: ${((round3 - round2) / 1000).toFixed(2)} s per round`);

    const replies = specs.map((s, client) => ({ client, value: s.value, tokens: s.examples }));
    await assertFinal(out, trivialReference([replies, replies, replies], "tokens"));

    const record = JSON.parse(await Deno.readTextFile(`${out}/result.json`)).rounds;
    // The query and the evaluation before training, then eval-every 2: evaluation in round 2
    // and at the end (round 3), as `deno task train` does.
    assertEquals(record.map((r: { round: number; phase: string }) => `${r.phase} ${r.round}`), [
      "query 0",
      "evaluate 0",
      "train 1",
      "train 2",
      "evaluate 2",
      "train 3",
      "evaluate 3",
    ]);
    for (const r of record) {
      assertEquals(r.replied, [...ids].sort());
      assertEquals(r.missing, []);
      // Each node is recorded with the client id it reported.
      for (const [client, id] of ids.entries()) assertEquals(r.nodes[id].client, client);
    }

    // The run options travel in every ConfigRecord: run config overrides and pyproject defaults.
    const config = JSON.parse((await nodes[0].waitFor(/^task train 2 (.*)$/))[1]);
    assertEquals(config["server-round"], 2);
    assertEquals(config.rounds, 3);
    assertEquals(config["local-steps"], 7);
    assertEquals(config.lr, 0.0005);
    assertEquals(config.method, "comigs-1g1s");
    assertEquals(config["router-on-train"], false);
    assert(!("min-nodes" in config), "the ServerApp's own options stay on the server");
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await link.stop();
  }
});
