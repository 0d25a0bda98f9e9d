// CoMiGS end to end on Flower: a real flower-superlink on 127.0.0.1, the shipped ServerApp (`flwr
// run flower/`) and three comigs nodes as separate processes (`deno task flower-node`, here with
// the tiny run's documents: comigs_node.ts) end with the same bits as the in-process simulation
// (`federate`, through runTraining) with the same seed: the same summary (every client's final
// and pretrained test perplexity, their means), the same global shared tensors, and every node's
// adapters file byte for byte the simulation's. The ServerApp's aggregate equals ours because it
// averages in float64 in client order (flower/comigs_flower/strategy.py); Flower's stock FedAvg
// averages in float32 in arrival order and would differ in the last bits. Heterogeneous nodes
// (E = 1, 2, 4, comigs-1gxs) run unchanged: only attention LoRA and the generalist cross, and
// the ServerApp asserts exactly those names arrive (federation_test.ts shows it refusing others).
import { readSafetensors } from "../../model/safetensors.ts";
import { assert, assertEquals } from "../assert.ts";
import { assertSameAsSimulation, flowerRun, simulate } from "./comigs_compare.ts";
import { flowerTest } from "./harness.ts";

flowerTest("flower: 3 comigs nodes run CoMiGS-1G1S with the simulation's bits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "flower-comigs-" });
  try {
    const sim = await simulate(dir, "comigs-1g1s", [2, 2, 2]);
    const { out, nodeDirs } = await flowerRun(dir, "comigs-1g1s");
    await assertSameAsSimulation(out, nodeDirs, sim);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

flowerTest("flower: heterogeneous comigs nodes (E = 1, 2, 4) in one run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "flower-comigs-" });
  try {
    const experts = [1, 2, 4];
    const sim = await simulate(dir, "comigs-1gxs", experts);
    const { out, nodeDirs } = await flowerRun(
      dir,
      "comigs-1gxs",
      experts.map((E) => ["--experts", String(E)]),
    );
    await assertSameAsSimulation(out, nodeDirs, sim);
    const summary = JSON.parse(await Deno.readTextFile(`${out}/summary.json`));
    assertEquals(summary.clients.map((c: { n_experts: number }) => c.n_experts), experts);
    // Only attention LoRA and the generalist crossed (the same names from every node).
    const final = (await readSafetensors(`${out}/final.safetensors`)).tensors;
    for (const name of final.keys()) {
      assert(/^h\.\d+\.(attn\.|mlp\.experts\.0\.)/.test(name), `${name} crossed`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
