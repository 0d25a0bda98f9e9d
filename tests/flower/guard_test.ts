// The ServerApp's defences (flower/comigs_flower/validate_reply.py, aggregate.py) against a real
// flower-superlink with trivial nodes (test_node.ts): hostile nodes (a NaN, a wrong shape, a
// specialist's tensor, an update scaled by 10⁶, arrays in an evaluate reply) are refused every
// round with fed/validate_update.ts's own words for the problem while the run completes with the
// honest nodes' mean, under the default update-norm bound; the median and the trimmed mean end
// equal to fed/aggregate.ts bit for bit; a round with fewer accepted replies than `min-clients`
// keeps the previous global.

import { quorumShortfall } from "../../fed/aggregate.ts";
import { defaultMaxUpdateNorm, shapesOf, validateMessage } from "../../fed/validate_update.ts";
import { assert, assertEquals } from "../assert.ts";
import {
  assertFinal,
  type Attack,
  flowerTest,
  initialArrays,
  NodeProcess,
  SuperLink,
  TRIVIAL_RUN,
  trivialReference,
  trivialTrained,
} from "./harness.ts";

interface NodeSpec {
  client: number;
  value: number;
  attack?: Attack;
  evalArrays?: boolean;
}

interface PhaseRecord {
  round: number;
  phase: string;
  replied: string[];
  refused: { node: string; client: number | null; reason: string }[];
  nodes: Record<string, unknown>;
  kept?: string | null;
}

/** Starts a trivial node per spec; resolves with the processes and their node ids. */
async function startNodes(
  link: SuperLink,
  specs: NodeSpec[],
): Promise<{ nodes: NodeProcess[]; ids: string[] }> {
  const nodes = specs.map((s) => {
    const args = ["--superlink", link.url, "--client", `${s.client}`, `--value=${s.value}`];
    if (s.attack) args.push("--attack", s.attack);
    if (s.evalArrays) args.push("--eval-arrays");
    return new NodeProcess(args);
  });
  return { nodes, ids: await Promise.all(nodes.map((n) => n.nodeId())) };
}

async function phases(out: string): Promise<PhaseRecord[]> {
  return JSON.parse(await Deno.readTextFile(`${out}/result.json`)).rounds;
}

flowerTest(
  "flower guard: hostile nodes are refused every round, the honest ones averaged",
  async () => {
    const link = await SuperLink.start();
    // lr 0.05 and 10 local steps: the default bound 2·lr·T·√10 = 3.162; the honest update of
    // 0.95 everywhere has norm 3.004, under it.
    const [lr, steps] = [0.05, 10];
    const honest: NodeSpec[] = [
      { client: 0, value: 0.1 },
      { client: 1, value: -0.3 },
      { client: 2, value: 0.95 },
    ];
    const hostile: NodeSpec[] = [
      { client: 3, value: 0.2, attack: "nan" },
      { client: 4, value: 0.2, attack: "shape", evalArrays: true },
      { client: 5, value: 0.2, attack: "specialist" },
      { client: 6, value: 0.2, attack: "scale" },
    ];
    const { nodes, ids } = await startNodes(link, [...honest, ...hostile]);
    try {
      const rounds = 2;
      const { runId, out } = await link.run({
        rounds,
        "min-nodes": 7,
        "eval-every": rounds,
        lr,
        "local-steps": steps,
      });
      assertEquals(await link.waitFinished(runId, 180), "finished:completed");
      const honestReplies = honest.map(({ client, value }) => ({ client, value }));
      await assertFinal(out, trivialReference([honestReplies, honestReplies]));

      const record = await phases(out);
      const bound = defaultMaxUpdateNorm(lr, steps, 10);
      const hostileIds = ids.slice(honest.length);
      for (const round of [1, 2]) {
        const train = record.find((r) => r.round === round && r.phase === "train")!;
        assertEquals(train.kept, null);
        assertEquals(Object.keys(train.nodes).sort(), ids.slice(0, honest.length).sort());
        assertEquals(train.refused.map((r) => r.node).sort(), [...hostileIds].sort());
        // The global each node started this round from, and what the TS validator says of the
        // same reply: the ServerApp's reason must state the same problem.
        const global = round === 1 ? initialArrays() : trivialReference([honestReplies]);
        for (const [k, spec] of hostile.entries()) {
          const verdict = validateMessage(
            {
              round,
              sender: spec.client,
              trainTokens: 1,
              tensors: trivialTrained(global, spec.value, spec.attack),
            },
            { round, client: spec.client, shapes: shapesOf(global), global, maxUpdateNorm: bound },
          );
          assert(!verdict.accepted, `the TS validator accepts the ${spec.attack} reply`);
          const refusal = train.refused.find((r) => r.node === hostileIds[k])!;
          assertEquals(refusal.client, spec.client);
          assertEquals(
            refusal.reason,
            `node ${hostileIds[k]} (client ${spec.client}), round ${round}: update refused: ` +
              verdict.refusal.problem,
          );
        }
      }
      const scaled = record.find((r) => r.phase === "train")!.refused.find((r) => r.client === 6)!;
      assert(scaled.reason.endsWith(`exceeds the bound 3.162 (max update norm)`), scaled.reason);
      // Arrays in an evaluate reply: refused there too, before and after training.
      for (const round of [0, rounds]) {
        const evaluation = record.find((r) => r.round === round && r.phase === "evaluate")!;
        assertEquals(evaluation.refused.map((r) => r.node), [hostileIds[1]]);
        assert(
          evaluation.refused[0].reason.startsWith(
            `node ${
              hostileIds[1]
            } (client 4), round ${round}: evaluate reply refused: it carries ` +
              "arrays",
          ),
          evaluation.refused[0].reason,
        );
        assertEquals(Object.keys(evaluation.nodes).length, ids.length - 1);
      }
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
      await link.stop();
    }
  },
);

flowerTest("flower guard: median and trimmed mean equal fed/aggregate.ts bit for bit", async () => {
  // Two runs at once, each on its own SuperLink: the median of 4 nodes (the mean of the two
  // middle values) and the trimmed mean of 5 (trim 0.25: the lowest and highest cut).
  const values = [0.1, -0.7, 0.3, 0.45, 2.5];
  const runs = [
    { aggregation: "median", clients: 4 },
    { aggregation: "trimmed-mean", clients: 5 },
  ] as const;
  await Promise.all(runs.map(async ({ aggregation, clients }) => {
    const link = await SuperLink.start();
    const specs = values.slice(0, clients).map((value, client) => ({ client, value }));
    const { nodes } = await startNodes(link, specs);
    try {
      const { runId, out } = await link.run({
        ...TRIVIAL_RUN,
        rounds: 1,
        "min-nodes": clients,
        aggregation,
      });
      assertEquals(await link.waitFinished(runId, 180), "finished:completed");
      const want = trivialReference([specs], aggregation);
      // Not what a plain mean would give: the test tells the aggregations apart.
      const mean = trivialReference([specs], "uniform");
      assert(
        [...want].some(([name, t]) => t.data.some((x, i) => x !== mean.get(name)!.data[i])),
        `${aggregation} equals the mean here`,
      );
      await assertFinal(out, want);
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
      await link.stop();
    }
  }));
});

flowerTest("flower guard: fewer accepted replies than min-clients keep the global", async () => {
  const link = await SuperLink.start();
  const { nodes, ids } = await startNodes(link, [
    { client: 0, value: 0.1 },
    { client: 1, value: 0.2 },
    { client: 2, value: 0.3, attack: "nan" },
  ]);
  try {
    const { runId, out } = await link.run({
      ...TRIVIAL_RUN,
      rounds: 1,
      "min-nodes": 3,
      "min-clients": 3,
    });
    assertEquals(await link.waitFinished(runId, 180), "finished:completed");
    for (const train of (await phases(out)).filter((r) => r.phase === "train")) {
      assertEquals(train.refused.map((r) => r.node), [ids[2]]);
      assertEquals(train.kept, quorumShortfall(train.round, 2, 3));
    }
    // Two accepted updates, three required: the global did not move.
    await assertFinal(out, initialArrays());
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await link.stop();
  }
});
