// Differential privacy on Flower, end to end: the tiny CoMiGS-1G1S run with `--dp central` and
// with `--dp local`, seeded (`dp-seed`), on a real SuperLink with the shipped ServerApp and three
// comigs node processes, ends with the simulation's bits (summary.json with its privacy block,
// the global shared tensors, every node's adapters) and records the simulation's ε after every
// round. Central: the ServerApp clips, sums, noises from the keyed stream (its Python port of
// fed/noise.ts) and divides by K as fed/privacy.ts does; local: each node noises its own update
// (fed/privacy.ts run by the node's client), the ServerApp averages. C is small enough that
// every update is clipped.
import { parseMetrics } from "../../fed/records.ts";
import { assert, assertEquals } from "../assert.ts";
import { assertSameAsSimulation, flowerRun, simulate } from "./comigs_compare.ts";
import { flowerTest } from "./harness.ts";

const C = 0.01, Z = 0.5, SEED = 11;

async function dpRun(mode: "central" | "local") {
  const dir = await Deno.makeTempDir({ prefix: `flower-dp-${mode}-` });
  try {
    const sim = await simulate(dir, "comigs-1g1s", [2, 2, 2], {
      dp: mode,
      dpClip: C,
      dpNoise: Z,
      dpSeed: SEED,
    });
    const { out, record } = await flowerRun(dir, "comigs-1g1s", undefined, {
      dp: mode,
      "dp-clip": C,
      "dp-noise": Z,
      "dp-seed": SEED,
    });
    await assertSameAsSimulation(out, [0, 1, 2].map((c) => `${dir}/node${c}`), sim);
    const summary = JSON.parse(await Deno.readTextFile(`${out}/summary.json`));
    assertEquals(summary.privacy.mode, mode);
    assert(summary.privacy.epsilon > 0, JSON.stringify(summary.privacy));
    // ε after every round, as metrics.jsonl's privacy events.
    const spent = parseMetrics(await Deno.readTextFile(`${sim}/metrics.jsonl`))
      .filter((r) => "event" in r && r.event === "privacy");
    assertEquals(
      record.filter((r) => r.phase === "train").map((r) => ({ round: r.round, ...r.privacy })),
      spent.map((r) => ({ round: r.round, epsilon: r.epsilon, delta: r.delta })),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

flowerTest("flower DP: central DP in the ServerApp ends with the simulation's bits", async () => {
  await dpRun("central");
});

flowerTest("flower DP: local DP on the nodes ends with the simulation's bits", async () => {
  await dpRun("local");
});
