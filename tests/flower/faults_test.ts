// Faults against a real flower-superlink and the shipped ServerApp, with trivial nodes
// (test_node.ts): a node killed mid-round (SIGKILL: no sign-off) and restarted with its kept key
// (but not its node id: it waits until the SuperLink lets the dead session lapse) comes back as
// the same node and takes part in the next round; a node that never comes back does not hang the
// run (Flower's round timeout; FedAvg aggregates the replies it got; result.json names the
// missing node); an unreachable SuperLink gets retries with back-off and one clear message, no
// stack trace. comigs_faults_test.ts has the same faults with comigs nodes.

import { assert, assertEquals } from "../assert.ts";
import {
  assertFinal,
  flowerTest,
  freePort,
  NodeProcess,
  SuperLink,
  TRIVIAL_RUN,
  trivialReference,
} from "./harness.ts";

interface RoundRecord {
  round: number;
  phase: string;
  replied: string[];
  missing: string[];
  errors: Record<string, string>;
}

flowerTest("flower: a node killed mid-round and restarted continues as the same node", async () => {
  const link = await SuperLink.start();
  const key = `${link.home}/node-c.pem`;
  const args = (client: number) => ["--superlink", link.url, "--client", `${client}`];
  const a = new NodeProcess([...args(0), "--value", "1"]);
  const b = new NodeProcess([...args(1), "--value", "2"]);
  const c = new NodeProcess([...args(2), "--value", "4", "--key", key, "--hold-round", "1"]);
  let restarted: NodeProcess | undefined;
  try {
    const [idA, idB, idC] = await Promise.all([a.nodeId(), b.nodeId(), c.nodeId()]);
    // The train message the killed process had pulled is lost with it (the SuperLink delivers a
    // message once), so round 1 ends by its timeout; the restarted node, back under the same id,
    // gets every later message.
    const { runId, out } = await link.run({
      ...TRIVIAL_RUN,
      rounds: 2,
      "min-nodes": 3,
      "round-timeout": 20,
    });
    await c.waitFor(/^holding 1$/);
    await c.stop("SIGKILL");
    restarted = new NodeProcess([...args(2), "--value", "4", "--key", key]);
    assertEquals(await restarted.nodeId(), idC, "the kept key brings back the same node id");
    await restarted.waitFor(/^replied train 2$/, 120);
    assertEquals(await link.waitFinished(runId, 120), "finished:completed");

    const record: RoundRecord[] = JSON.parse(await Deno.readTextFile(`${out}/result.json`)).rounds;
    const train1 = record.find((r) => r.round === 1 && r.phase === "train")!;
    assertEquals(train1.replied, [idA, idB].sort());
    assertEquals(train1.missing, [idC]);
    const train2 = record.find((r) => r.round === 2 && r.phase === "train")!;
    assertEquals(train2.replied, [idA, idB, idC].sort());
    // Round 1 averages a and b, round 2 all three.
    const [ra, rb, rc] = [1, 2, 4].map((value, client) => ({ client, value }));
    await assertFinal(out, trivialReference([[ra, rb], [ra, rb, rc]]));
  } finally {
    await Promise.all([a.stop(), b.stop(), c.stop("SIGKILL"), restarted?.stop()]);
    await link.stop();
  }
});

flowerTest("flower: a node that never returns does not hang the run", async () => {
  const link = await SuperLink.start();
  const args = (
    client: number,
    value: number,
  ) => ["--superlink", link.url, "--client", `${client}`, "--value", `${value}`];
  const a = new NodeProcess(args(0, 1));
  const b = new NodeProcess(args(1, 2));
  const c = new NodeProcess([...args(2, 4), "--hold-round", "1"]);
  try {
    const [idA, idB, idC] = await Promise.all([a.nodeId(), b.nodeId(), c.nodeId()]);
    const { runId, out } = await link.run({
      ...TRIVIAL_RUN,
      rounds: 2,
      "min-nodes": 2,
      "round-timeout": 6,
    });
    await c.waitFor(/^holding 1$/);
    await c.stop("SIGKILL");
    assertEquals(await link.waitFinished(runId, 180), "finished:completed");
    const record: RoundRecord[] = JSON.parse(await Deno.readTextFile(`${out}/result.json`)).rounds;
    const train1 = record.find((r) => r.round === 1 && r.phase === "train")!;
    assertEquals(train1.replied, [idA, idB].sort());
    assertEquals(train1.missing, [idC]);
    // It took part before training (query, evaluation 0), never after.
    for (const r of record.filter((r) => r.round > 0)) {
      assert(!r.replied.includes(idC), `the dead node replied in ${r.phase} ${r.round}?`);
    }
    // Each round averages a and b only.
    const [ra, rb] = [1, 2].map((value, client) => ({ client, value }));
    await assertFinal(out, trivialReference([[ra, rb], [ra, rb]]));
  } finally {
    await Promise.all([a.stop(), b.stop(), c.stop("SIGKILL")]);
    await link.stop();
  }
});

flowerTest("flower: an unreachable SuperLink gets retries, then one clear error", async () => {
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  // Nobody listens: back-off notices, then one message and exit 1, no stack trace.
  const lost = new NodeProcess(["--superlink", url, "--retry-s", "3"]);
  const status = await lost.exit();
  assertEquals(status.code, 1);
  assert(/unreachable .*retrying in/.test(lost.stderr), lost.stderr);
  const last = lost.stderr.trim().split("\n").at(-1)!;
  assert(
    last.startsWith(`error: the SuperLink at ${url} is unreachable`) &&
      last.includes("Check that flower-superlink runs"),
    last,
  );
  assert(!/^\s+at /m.test(lost.stderr), `a stack trace leaked:\n${lost.stderr}`);

  // A SuperLink that comes up while the node is retrying is joined.
  const patient = new NodeProcess(["--superlink", url, "--retry-s", "60"]);
  let link: SuperLink | undefined;
  try {
    while (!patient.stderr.includes("retrying in")) await new Promise((r) => setTimeout(r, 50));
    link = await SuperLink.start({ port });
    assert(/^\d+$/.test(await patient.nodeId()));
  } finally {
    await patient.stop();
    await link?.stop();
  }
});
