// The comigs Flower tests' yardstick: the tiny run simulated in this process (runTraining, i.e.
// `federate` with a run folder), and the check that a Flower run ended with its bits.
import { ProgressBar } from "../../cli/progress.ts";
import type { Method } from "../../fed/methods.ts";
import { runTraining } from "../../fed/run.ts";
import { readSafetensors } from "../../model/safetensors.ts";
import { assert, assertEquals } from "../assert.ts";
import { testEngine } from "../util.ts";
import { corpora, simOptions } from "./tiny_comigs.ts";

const quiet = () => new ProgressBar(0, 0, false, () => {});

/** The simulated run of `method` with `experts`, in `dir`/sim. */
export async function simulate(dir: string, method: Method, experts: number[]): Promise<string> {
  const options = simOptions(`${dir}/sim`, method, experts);
  await runTraining(await testEngine(), { options }, { progress: quiet(), corpora: corpora() });
  return options.out;
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
    const [mine, theirs] = await Promise.all([
      Deno.readFile(`${dir}/adapters.safetensors`),
      Deno.readFile(`${sim}/clients/${client}/adapters.safetensors`),
    ]);
    assert(
      mine.length === theirs.length && mine.every((b, i) => b === theirs[i]),
      `client ${client}'s adapters differ from the simulation's`,
    );
  }
}
