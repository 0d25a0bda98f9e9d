// A Flower node process for the tests: the real node (fed/flower/node.ts) doing a small
// computation a test can redo. Query: the tests' initial shared tensors (harness.ts). Train:
// every received tensor + --value, with num-examples = --examples. Evaluate: the sum of the
// received tensors' values as "eval-sum". Every reply names the node's --client, as a comigs
// node's does (the ServerApp orders and records the nodes by it). A hostile node (--attack)
// spoils every train reply: a NaN, a wrong shape, a specialist's tensor added, or its update
// (--value) scaled by 10⁶; --eval-arrays adds the tensors to its evaluate replies. It prints one
// line per event on
// stdout ("node <id>", "task <kind> <round> <config JSON>", "replied <kind> <round>",
// "holding <round>") so a test can follow it, and on a bad flag or a refused connection one
// "error: ..." line (no stack trace).
//
//   deno run -A tests/flower/test_node.ts --superlink URL [--client C] [--ca FILE] [--key FILE]
//     [--value V] [--examples N] [--hold-round R] [--attack nan|shape|specialist|scale]
//     [--eval-arrays] [--heartbeat S]

import { parseArgs } from "node:util";
import { FlowerNode } from "../../fed/flower/node.ts";
import { generateNodeKeys, importPrivateKeyPem } from "../../fed/flower/node_keys.ts";
import { exportPrivateKeyPem } from "../../fed/flower/node_keys.ts";
import type { NamedTensor } from "../../model/safetensors.ts";
import { type Attack, ATTACKS, initialArrays, trivialTrained } from "./harness.ts";

const { values: flags } = parseArgs({
  options: {
    superlink: { type: "string" },
    client: { type: "string", default: "0" },
    ca: { type: "string" },
    key: { type: "string" },
    value: { type: "string", default: "0" },
    examples: { type: "string", default: "1" },
    "hold-round": { type: "string" },
    attack: { type: "string" },
    "eval-arrays": { type: "boolean", default: false },
    heartbeat: { type: "string", default: "10" },
    "retry-s": { type: "string", default: "600" },
    "activation-patience": { type: "string" },
  },
});

async function main(): Promise<void> {
  const value = Number(flags.value);
  const attack = flags.attack;
  if (attack !== undefined && !(ATTACKS as readonly string[]).includes(attack)) {
    throw new Error(`--attack ${attack}: expected one of ${ATTACKS.join(", ")}`);
  }
  const examples = Number(flags.examples);
  const hold = flags["hold-round"] === undefined ? undefined : Number(flags["hold-round"]);
  let keys;
  if (flags.key) {
    // A kept identity: made on first use, reused on restart (as a real node keeps its key).
    try {
      keys = await importPrivateKeyPem(await Deno.readTextFile(flags.key), flags.key);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      keys = await generateNodeKeys();
      await Deno.writeTextFile(flags.key, await exportPrivateKeyPem(keys));
    }
  }
  const node = await FlowerNode.connect({
    superlink: flags.superlink ?? "",
    caCert: flags.ca ? await Deno.readTextFile(flags.ca) : undefined,
    keys,
    heartbeatIntervalS: Number(flags.heartbeat),
    pollIntervalS: 0.2,
    retry: { maxWaitS: Number(flags["retry-s"]), initialDelayS: 0.5, maxDelayS: 2 },
    activationPatienceS: flags["activation-patience"] === undefined
      ? undefined
      : Number(flags["activation-patience"]),
  });
  const stop = () => node.close().then(() => Deno.exit(0));
  Deno.addSignalListener("SIGTERM", stop);
  console.log(`node ${node.nodeId}`);
  const facts = { client: Number(flags.client) };
  for await (const task of node.tasks()) {
    const config = JSON.stringify(task.config, (_, v) => typeof v === "bigint" ? String(v) : v);
    console.log(`task ${task.kind} ${task.round} ${config}`);
    const arrays = task.arrays ?? new Map<string, NamedTensor>();
    if (task.kind === "query") {
      await task.reply({ arrays: initialArrays(), config: facts });
    } else if (task.kind === "train") {
      if (task.round === hold) {
        console.log(`holding ${task.round}`);
        await new Promise(() => {}); // never answers: the test kills this process
      }
      await task.reply({
        arrays: trivialTrained(arrays, value, attack as Attack | undefined),
        metrics: { "num-examples": examples, "train-value": value },
        config: facts,
      });
    } else {
      let sum = 0;
      for (const t of arrays.values()) for (const x of t.data) sum += x;
      await task.reply({
        arrays: flags["eval-arrays"] ? arrays : undefined,
        metrics: { "num-examples": examples, "eval-sum": sum },
        config: facts,
      });
    }
    console.log(`replied ${task.kind} ${task.round}`);
  }
}

try {
  await main();
} catch (e) {
  console.error(`error: ${(e as Error).message}`);
  Deno.exit(1);
}
