// A Flower node's options (fed/flower/run_options.ts, cli/flower_node.ts) without a SuperLink:
// the ServerApp's run config plus the node's own flags give exactly the simulation's options for
// that client; the node's experts and token cap land at its client id only; what the ServerApp
// sends wrong is one error naming the run-config key, what the node is given wrong one naming
// its flag.
import { parseInvocation } from "../../cli/flower_node.ts";
import { UsageError } from "../../cli/args.ts";
import {
  checkNodeOptions,
  nodeTrainOptions,
  RunConfigError,
  SERVER_OPTIONS,
} from "../../fed/flower/run_options.ts";
import { OptionError } from "../../model/option_error.ts";
import { assertEquals, assertThrows } from "../assert.ts";
import { MODEL, serverConfig, simOptions } from "./tiny_comigs.ts";

/** The ServerApp's ConfigRecord: pyproject.toml's defaults (train's), then the tiny run's. */
function config(overrides: Record<string, unknown> = {}) {
  const defaults: Record<string, unknown> = {
    method: "comigs-1g1s",
    rounds: 10,
    "local-steps": 10,
    "eval-every": 1,
    "router-every": 10,
    "router-steps": 2,
    "router-on-train": false,
    lr: 0.002,
    batch: 8,
    seq: 128,
    seed: 0,
    rank: 8,
    alpha: 16,
    "lora-scaling": "rslora",
    "top-k": 2,
    "lb-coef": 0.01,
    "lb-rho": 0.5,
    "lora-targets": "",
    aggregation: "uniform",
    dp: "none",
    "dp-clip": 1.0,
    "dp-noise": 1.0,
    "dp-delta": 1e-5,
    "dp-seed": -1,
  };
  assertEquals(Object.keys(defaults).sort(), Object.keys(SERVER_OPTIONS).sort());
  return { ...defaults, ...serverConfig("comigs-1g1s"), "server-round": 1, ...overrides } as Record<
    string,
    string | number | boolean
  >;
}

Deno.test("flower node options: the simulation's, with the node's own at its client id", () => {
  const local = { client: 1, clients: 3, model: MODEL, out: "node1" };
  assertEquals(nodeTrainOptions(config(), local), simOptions("node1", "comigs-1g1s", [2, 2, 2]));

  const hetero = nodeTrainOptions(config({ method: "comigs-1gxs" }), {
    ...local,
    client: 0,
    experts: 1,
    trainTokens: 500,
  });
  // Client 0 holds 1 expert (k = 2 is clipped to it); the others keep the method's default.
  assertEquals(hetero.experts, [1, 2, 4]);
  assertEquals(hetero.trainTokens, [500, null, null]);
  assertEquals(hetero.topK, 2);

  // DP: dp-seed -1 is train's absent --dp-seed (a secret key); a seed ≥ 0 is kept.
  const dp = { dp: "local", "dp-clip": 0.5, "dp-noise": 1.1, "dp-delta": 1e-6 };
  const secret = nodeTrainOptions(config(dp), local);
  assertEquals(
    [secret.dp, secret.dpClip, secret.dpNoise, secret.dpDelta, secret.dpSeed],
    ["local", 0.5, 1.1, 1e-6, null],
  );
  assertEquals(nodeTrainOptions(config({ ...dp, "dp-seed": 3 }), local).dpSeed, 3);

  // "" (pyproject.toml's default): every projection of the base; else the projections named.
  assertEquals(nodeTrainOptions(config(), local).loraTargets, null);
  assertEquals(
    nodeTrainOptions(config({ "lora-targets": "v,q" }), local).loraTargets,
    ["q_proj", "v_proj"],
  );
});

Deno.test("flower node options: a bad run config names its key, a bad flag its option", () => {
  const local = { client: 0, clients: 3, model: MODEL, out: "n" };
  const refused = (overrides: Record<string, unknown>, message: string) =>
    assertThrows(
      () => nodeTrainOptions(config(overrides), local),
      RunConfigError,
      `the ServerApp's run config: ${message}`,
    );
  refused(
    { method: "pcl" },
    '"method" is "pcl"; a Flower federation (FedAvg over the shared tensors) runs ' +
      "comigs-1g1s, comigs-2g, comigs-1gxs, pfedmoe, fedavg",
  );
  refused({ lr: "fast" }, '"lr" is "fast", not real');
  refused({ "router-on-train": 1 }, '"router-on-train" is "1", not boolean');
  refused({ "local-steps": 0 }, '"local-steps" must be an integer in 1..1000000, got 0');
  refused({ "top-k": 3 }, '"top-k" 3 exceeds the experts a client holds (at most 2)');
  refused({ dp: "both" }, '"dp" "both" is not one of: none, central, local');
  refused({ "dp-seed": -2 }, '"dp-seed" must be an integer in 0..4294967295, got -2');
  refused({ "lora-targets": "q,x" }, '"lora-targets" "x" is not an attention projection');
  refused({ "lora-targets": 3 }, '"lora-targets" is "3", not text');
  assertThrows(
    () => nodeTrainOptions({ ...config(), rounds: undefined! }, local),
    RunConfigError,
    '"rounds" is missing',
  );

  assertThrows(
    () => nodeTrainOptions(config(), { ...local, client: 3 }),
    OptionError,
    "client must be a client id of the scenario, 0..2, got 3",
  );
  assertThrows(
    () => nodeTrainOptions(config(), { ...local, experts: 4 }),
    OptionError,
    "experts [4,2,2]: method comigs-1g1s holds 2 experts per client",
  );
  assertThrows(() => checkNodeOptions({ ...local, experts: 0 }), OptionError, "experts must be");
  assertThrows(
    () => checkNodeOptions({ ...local, scenario: "poems" as "topics" }),
    OptionError,
    'scenario "poems" is not one of',
  );
});

Deno.test("flower-node flags: required ones, numbers, all", () => {
  assertThrows(
    () => parseInvocation(["--client", "0"]),
    UsageError,
    "missing --superlink, --out",
  );
  const args = ["--superlink", "http://127.0.0.1:9093", "--client", "2", "--out", "d"];
  const { node } = parseInvocation([...args, "--train-tokens", "all", "--experts", "4"]) as {
    node: { client: number; trainTokens?: number; experts?: number };
  };
  assertEquals([node.client, node.trainTokens, node.experts], [2, undefined, 4]);
  assertThrows(
    () => parseInvocation([...args, "--clients", "three"]),
    UsageError,
    '--clients must be an integer, got "three"',
  );
});
