// The comigs Flower tests' yardstick: the tiny run simulated in this process (runTraining, i.e.
// `federate` with a run folder), the same run on Flower (a real SuperLink, the shipped ServerApp
// and three comigs node processes), and the check that the Flower run ended with its bits.
import { ProgressBar } from "../../cli/progress.ts";
import type { Method } from "../../fed/methods.ts";
import type { TrainOptionsInput } from "../../fed/options.ts";
import { runTraining } from "../../fed/run.ts";
import { readSafetensors } from "../../model/safetensors.ts";
import { assert, assertEquals, assertSameFile } from "../assert.ts";
import { testEngine } from "../util.ts";
import { flowerTest, NodeProcess, SuperLink } from "./harness.ts";
import { corpora, nodeArgs, serverConfig, simOptions } from "./tiny_comigs.ts";

export { flowerTest };

const quiet = () => new ProgressBar(0, 0, false, () => {});

/** The simulated run of `method` with `experts` (and `extra` options), in `dir`/sim. */
export async function simulate(
  dir: string,
  method: Method,
  experts: number[],
  extra: TrainOptionsInput = {},
): Promise<string> {
  const options = simOptions(`${dir}/sim`, method, experts, extra);
  await runTraining(await testEngine(), { options }, { progress: quiet(), corpora: corpora() });
  return options.out;
}

/** A phase of the ServerApp's result.json (what the tests read of it). */
export interface PhaseRecord {
  round: number;
  phase: string;
  missing: string[];
  refused: unknown[];
  /** After a train phase of a DP run: the ε spent so far. */
  privacy?: { epsilon: number; delta: number };
}

/**
 * Runs `method` on Flower with three comigs nodes (node i with `extra[i]` flags; `runConfig`: more
 * of the ServerApp's run config); the run folder is copied to `dir`/flower.
 */
export async function flowerRun(
  dir: string,
  method: Method,
  extra: string[][] = [[], [], []],
  runConfig: Record<string, string | number> = {},
): Promise<{ out: string; nodeDirs: string[]; record: PhaseRecord[] }> {
  const link = await SuperLink.start();
  const nodeDirs = [0, 1, 2].map((client) => `${dir}/node${client}`);
  const nodes = nodeDirs.map((out, client) =>
    new NodeProcess(nodeArgs(link.url, client, out, extra[client]), "comigs_node.ts")
  );
  try {
    await Promise.all(nodes.map((n) => n.comigsNodeId()));
    const { runId, out } = await link.run({
      ...serverConfig(method),
      "min-nodes": 3,
      ...runConfig,
    });
    assertEquals(await link.waitFinished(runId, 600), "finished:completed", await link.log());
    for (const [client, node] of nodes.entries()) {
      assertEquals((await node.exit()).code, 0, node.stderr);
      assert(
        node.lines.at(-1)!.startsWith(`client ${client} (`) &&
          node.lines.at(-1)!.endsWith(
            `2 rounds done; adapters in ${nodeDirs[client]}` +
              "/adapters.safetensors",
          ),
        node.lines.join("\n"),
      );
    }
    const record = JSON.parse(await Deno.readTextFile(`${out}/result.json`)).rounds;
    // Every phase of the run, every node in it (eval-every 1).
    assertEquals(record.map((r: { round: number; phase: string }) => `${r.phase} ${r.round}`), [
      "query 0",
      "evaluate 0",
      "train 1",
      "evaluate 1",
      "train 2",
      "evaluate 2",
    ]);
    for (const r of record) {
      assertEquals(r.missing, [], `${r.phase} ${r.round}`);
      // Honest comigs nodes pass every check, the default update-norm bound included.
      assertEquals(r.refused, [], `${r.phase} ${r.round}`);
    }
    // The run folder leaves the ServerApp's machine in a real deployment: copy it out.
    await Deno.mkdir(`${dir}/flower`, { recursive: true });
    for (const file of ["result.json", "summary.json", "final.safetensors"]) {
      await Deno.copyFile(`${out}/${file}`, `${dir}/flower/${file}`);
    }
    return { out: `${dir}/flower`, nodeDirs, record };
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await link.stop();
  }
}

/** Asserts that the Flower run in `out` with nodes in `nodeDirs` ended as the simulated `sim`. */
export async function assertSameAsSimulation(
  out: string,
  nodeDirs: string[],
  sim: string,
): Promise<void> {
  const { reported_by_nodes: reported, ...summary } = JSON.parse(
    await Deno.readTextFile(`${out}/summary.json`),
  );
  assertEquals(reported, ["scenario", "ood", "base_model", "clients"]);
  assertEquals(summary, JSON.parse(await Deno.readTextFile(`${sim}/summary.json`)));
  const final = (await readSafetensors(`${out}/final.safetensors`)).tensors;
  const global = (await readSafetensors(`${sim}/global.safetensors`)).tensors;
  assertEquals([...final.keys()].sort(), [...global.keys()].sort());
  for (const [name, t] of global) {
    const got = final.get(name)!;
    assertEquals(got.shape, t.shape);
    assert(got.data.every((x, i) => Object.is(x, t.data[i])), `global ${name} differs`);
  }
  for (const [client, dir] of nodeDirs.entries()) {
    await assertSameFile(
      `${dir}/adapters.safetensors`,
      `${sim}/clients/${client}/adapters.safetensors`,
      `client ${client} (Flower) vs the simulation`,
    );
  }
}
