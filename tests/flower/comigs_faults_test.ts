// Faults with comigs nodes (`deno task flower-node`, comigs_node.ts) on a real flower-superlink
// and the shipped ServerApp: a node killed (SIGKILL, no sign-off) after round 1 and started again
// with its folder takes its session back (same node id, no wait), continues from its saved state,
// and the run still ends with the simulation's bits (its folder then serves no other run); a
// node that leaves for good does not hang the run: Flower's round timeout ends the phases it
// misses, FedAvg aggregates the others, the run completes, and result.json names the missing node.
import { assert, assertEquals } from "../assert.ts";
import { flowerTest, NodeProcess, SuperLink } from "./harness.ts";
import { assertSameAsSimulation, simulate } from "./comigs_compare.ts";
import { nodeArgs, serverConfig } from "./tiny_comigs.ts";

interface PhaseRecord {
  round: number;
  phase: string;
  replied: string[];
  missing: string[];
}

const phase = (record: PhaseRecord[], name: string, round: number) =>
  record.find((r) => r.phase === name && r.round === round)!;

flowerTest("flower: a comigs node killed after round 1 and restarted continues", async () => {
  const dir = await Deno.makeTempDir({ prefix: "flower-comigs-" });
  const link = await SuperLink.start();
  const dirs = [0, 1, 2].map((client) => `${dir}/node${client}`);
  const start = (client: number) =>
    new NodeProcess(nodeArgs(link.url, client, dirs[client]), "comigs_node.ts");
  const nodes = [0, 1, 2].map(start);
  try {
    const sim = await simulate(dir, "comigs-1g1s", [2, 2, 2]);
    const ids = await Promise.all(nodes.map((n) => n.comigsNodeId()));
    const { runId, out } = await link.run({ ...serverConfig("comigs-1g1s"), "min-nodes": 3 });
    await nodes[1].waitFor(/answered evaluate 1 \(/, 300, "stderr");
    await nodes[1].stop("SIGKILL");
    nodes[1] = start(1);
    assertEquals(await nodes[1].comigsNodeId(), ids[1], "the same node, from its folder");
    await nodes[1].waitFor(new RegExp(`took back the session of node ${ids[1]}$`), 5, "stderr");
    assertEquals(await link.waitFinished(runId, 600), "finished:completed", await link.log());
    for (const node of nodes) assertEquals((await node.exit()).code, 0, node.stderr);
    // It continued from its state after round 1, not from the start.
    await nodes[1].waitFor(/continuing after round 1$/, 1, "stderr");

    const record: PhaseRecord[] = JSON.parse(await Deno.readTextFile(`${out}/result.json`)).rounds;
    for (const r of record) {
      assertEquals(r.replied, [...ids].sort(), `${r.phase} ${r.round}`);
      assertEquals(r.missing, []);
    }
    await assertSameAsSimulation(out, dirs, sim);

    // A folder whose run is over serves no other run: one clear error.
    const again = start(0);
    nodes.push(again);
    assertEquals((await again.exit(60)).code, 1);
    assert(
      again.errLines.at(-1)!.startsWith(`error: run ${runId}, which ${dirs[0]} holds, is over (`) &&
        !/^\s+at /m.test(again.stderr),
      again.stderr,
    );
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await link.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

flowerTest("flower: a comigs node that leaves for good: the run ends, it is recorded", async () => {
  const dir = await Deno.makeTempDir({ prefix: "flower-comigs-" });
  const link = await SuperLink.start();
  const dirs = [0, 1, 2].map((client) => `${dir}/node${client}`);
  const nodes = dirs.map((out, client) =>
    new NodeProcess(nodeArgs(link.url, client, out), "comigs_node.ts")
  );
  try {
    const ids = await Promise.all(nodes.map((n) => n.comigsNodeId()));
    const { runId, out } = await link.run({
      ...serverConfig("comigs-1g1s"),
      "min-nodes": 2,
      "round-timeout": 15,
    });
    await nodes[2].waitFor(/answered evaluate 1 \(/, 300, "stderr");
    await nodes[2].stop("SIGKILL");
    assertEquals(await link.waitFinished(runId, 600), "finished:completed", await link.log());
    for (const node of nodes.slice(0, 2)) assertEquals((await node.exit()).code, 0, node.stderr);

    const record: PhaseRecord[] = JSON.parse(await Deno.readTextFile(`${out}/result.json`)).rounds;
    const everyone = [...ids].sort(), stayed = ids.slice(0, 2).sort();
    assertEquals(phase(record, "evaluate", 1).replied, everyone);
    for (const name of ["train", "evaluate"]) {
      assertEquals(phase(record, name, 2).replied, stayed, `${name} 2`);
      assertEquals(phase(record, name, 2).missing, [ids[2]], `${name} 2`);
    }
    // Its last evaluation (round 1) stays its result, as a simulated client's last record would.
    const summary = JSON.parse(await Deno.readTextFile(`${out}/summary.json`));
    assertEquals(summary.clients.map((c: { id: number }) => c.id), [0, 1, 2]);
    const evaluate1 = JSON.parse(await Deno.readTextFile(`${out}/result.json`)).rounds.find((
      r: PhaseRecord,
    ) => r.phase === "evaluate" && r.round === 1);
    assertEquals(summary.clients[2].test_ppl, evaluate1.nodes[ids[2]]["test-ppl"]);
    assert((await Deno.stat(`${dirs[0]}/adapters.safetensors`)).isFile);
  } finally {
    await Promise.all(nodes.map((n) => n.stop("SIGKILL")));
    await link.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
