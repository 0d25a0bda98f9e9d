// Clients on the GPU with the tiny golden base model and random token streams: the message
// boundary (only the method's shared tensors leave a client: never a specialist, a router or
// data), the alternating schedule (router phases every P expert steps over rounds; each step
// updates only its own tensors), pFedMoE's joint step, the no-router mean, heterogeneous E_i,
// an adapted model that starts exactly as its base, and PCL's personal mix of a bundle.
import { Client, type Schedule } from "../../fed/client.ts";
import { decodeMessage, encodeMessage } from "../../fed/message.ts";
import {
  type Method,
  METHOD_SPECS,
  methodAdapterConfig,
  methodInitAdapters,
} from "../../fed/methods.ts";
import type { Engine } from "../../engine/device.ts";
import { type AdapterConfig, adapterRole, initAdapters } from "../../model/adapters.ts";
import { loadGpt2Checkpoint } from "../../model/gpt2_checkpoint.ts";
import { StreamEvaluator } from "../../model/evaluate.ts";
import { PclStrategy } from "../../fed/pcl.ts";
import { Guard } from "../../fed/guard.ts";
import { resolveTrainOptions } from "../../fed/options.ts";
import { shapesOf } from "../../fed/validate_update.ts";
import { GPT2 } from "../../model/gpt2.ts";
import { assert, assertEquals } from "../assert.ts";
import { gpuTest, Rng } from "../util.ts";

const GOLDEN = new URL("../golden/gpt2-tiny", import.meta.url).pathname;
const base = await loadGpt2Checkpoint(GOLDEN);

function stream(seed: number, length: number): Uint32Array {
  const rng = new Rng(seed);
  return Uint32Array.from({ length }, () => Math.floor(rng.next() * base.config.vocab_size));
}

const SCHEDULE: Schedule = {
  batch: 2,
  seq: 8,
  lr: 1e-2,
  totalSteps: 10,
  routerEvery: 3,
  routerSteps: 2,
};

const LORA = { rank: 2, alpha: 4, scaling: "rslora" as const, topK: 2, lbCoef: 0.01, lbRho: 0.5 };

function adapterConfig(method: Method, experts: number): AdapterConfig {
  return methodAdapterConfig(METHOD_SPECS[method], LORA, experts, base.config);
}

function client(
  engine: Engine,
  model: GPT2,
  method: Method,
  { experts = 2, schedule = SCHEDULE, id = 0 } = {},
): Client {
  const config = adapterConfig(method, experts);
  const init = methodInitAdapters(METHOD_SPECS[method], base.config, config, 7 + id);
  // Nonzero lora_B so every tensor receives gradient from the first step.
  for (const [name, v] of init) if (name.endsWith("lora_B")) v.fill(0.01);
  return new Client(
    engine,
    model,
    id,
    { name: `c${id}`, train: stream(1 + id, 500), router: stream(100 + id, 500) },
    METHOD_SPECS[method],
    config,
    init,
    schedule,
    5,
  );
}

const sameBits = (a: Float32Array, b: Float32Array) =>
  a.length === b.length && a.every((x, i) => Object.is(x, b[i]));

function pick(values: Map<string, Float32Array>, role: ReturnType<typeof adapterRole>) {
  return [...values].filter(([name]) => adapterRole(name) === role);
}

gpuTest(
  "message boundary: each method sends exactly its shared tensors, as they are",
  async (engine) => {
    const model = new GPT2(engine, base.config, base.weights);
    const cases: [Method, number, string[]][] = [
      ["comigs-1g1s", 2, ["attention", "generalist"]],
      ["comigs-1gxs", 3, ["attention", "generalist"]],
      ["pfedmoe", 2, ["attention", "generalist"]],
      ["comigs-2g", 2, ["attention", "generalist", "specialist"]],
      ["fedavg", 2, ["attention", "generalist", "specialist"]],
      ["pcl", 2, ["attention", "generalist", "specialist"]],
      ["comigs-2s", 2, []],
      ["local", 2, []],
    ];
    for (const [method, experts, roles] of cases) {
      const c = client(engine, model, method, { experts });
      const bytes = await c.fit(1, 1, () => {});
      const message = decodeMessage(bytes);
      assertEquals(message.sender, 0);
      assertEquals(message.round, 1);
      const values = await c.adapters.values();
      const expected = [...values.keys()].filter((n) => roles.includes(adapterRole(n)));
      assertEquals([...message.tensors.keys()].sort(), expected.sort(), method);
      for (const [name, t] of message.tensors) {
        assert(sameBits(t.data, values.get(name)!), `${method}: ${name} differs from the client's`);
        assert(
          !name.includes("router") && !/experts\.[1-9]/.test(name) || roles.includes("specialist"),
        );
      }
      // Nothing else rides along: the bytes are the tensors, a JSON header and 3 metadata fields.
      const payload = [...message.tensors.values()].reduce((n, t) => n + t.data.byteLength, 0);
      assert(bytes.length - payload < 200 + 120 * message.tensors.size, `${method}: extra bytes`);
      c.dispose();
    }
    model.dispose();
  },
);

gpuTest(
  "schedule: router phases every P expert steps across rounds; steps touch only their own tensors",
  async (engine) => {
    const model = new GPT2(engine, base.config, base.weights);
    const withRouter = client(engine, model, "comigs-1g1s");
    const without = client(engine, model, "comigs-1g1s", {
      schedule: { ...SCHEDULE, routerSteps: 0 },
    });
    const init = await withRouter.adapters.values();
    // Two rounds of 1 and 1 steps: P = 3 not reached, so both clients are identical and the
    // routers untouched by the expert steps (which did change the LoRA tensors).
    for (const round of [1, 2]) {
      await withRouter.fit(round, 1, () => {});
      await without.fit(round, 1, () => {});
    }
    let a = await withRouter.adapters.values(), b = await without.adapters.values();
    for (const [name, v] of a) assert(sameBits(v, b.get(name)!), `${name} differs before step P`);
    for (const [name, v] of pick(a, "router")) assert(sameBits(v, init.get(name)!), name);
    assert(pick(a, "generalist").some(([name, v]) => !sameBits(v, init.get(name)!)));
    // Round 3's single step is expert step 3 = P: the router phase runs after it. LoRA tensors stay
    // equal between the two clients (router steps do not move them); routers differ.
    await withRouter.fit(3, 1, () => {});
    await without.fit(3, 1, () => {});
    a = await withRouter.adapters.values();
    b = await without.adapters.values();
    for (const [name, v] of a) {
      const same = sameBits(v, b.get(name)!);
      assert(adapterRole(name) === "router" ? !same : same, `${name} after the router phase`);
    }
    assertEquals(withRouter.step, 3);
    withRouter.dispose();
    without.dispose();
    model.dispose();
  },
);

gpuTest(
  "pFedMoE trains the router with the experts; no-router methods keep it at zero",
  async (engine) => {
    const model = new GPT2(engine, base.config, base.weights);
    const joint = client(engine, model, "pfedmoe");
    const init = await joint.adapters.values();
    await joint.fit(1, 1, () => {});
    for (const [name, v] of pick(await joint.adapters.values(), "router")) {
      assert(!sameBits(v, init.get(name)!), `${name} did not move in the joint step`);
    }
    const mean = client(engine, model, "fedavg");
    await mean.fit(1, 2, () => {});
    for (const [name, v] of pick(await mean.adapters.values(), "router")) {
      assert(v.every((x) => x === 0), `${name} moved`);
    }
    joint.dispose();
    mean.dispose();
    model.dispose();
  },
);

gpuTest(
  "heterogeneous experts: E = 1 has no router and shares the same tensors as E = 4",
  async (engine) => {
    const model = new GPT2(engine, base.config, base.weights);
    const one = client(engine, model, "comigs-1gxs", { experts: 1 });
    const four = client(engine, model, "comigs-1gxs", { experts: 4, id: 1 });
    assertEquals(one.adapters.routerParams().length, 0);
    assertEquals(four.adapters.routerParams().length, base.config.n_layer);
    const [m1, m4] = [await one.fit(1, 1, () => {}), await four.fit(1, 1, () => {})].map((b) =>
      decodeMessage(b)
    );
    assertEquals([...m1.tensors.keys()].sort(), [...m4.tensors.keys()].sort());
    one.dispose();
    four.dispose();
    model.dispose();
  },
);

gpuTest(
  "an adapted model with lora_B = 0 starts exactly as its base (k = E mean, and top-2)",
  async (engine) => {
    const model = new GPT2(engine, base.config, base.weights);
    const tokens = stream(9, 200);
    const plain = new StreamEvaluator(
      engine,
      base.config,
      tokens,
      2,
      8,
      (tape, batch) => model.forward(tape, batch).tokenLosses,
    );
    const baseLoss = await plain.meanLoss();
    for (const method of ["fedavg", "comigs-1g1s"] as const) {
      const config = adapterConfig(method, 2);
      const c = new Client(
        engine,
        model,
        0,
        { name: "c", train: tokens, router: tokens },
        METHOD_SPECS[method],
        config,
        initAdapters(base.config, config, 3),
        SCHEDULE,
        1,
      );
      const evaluator = c.evaluator(tokens);
      // Identical experts mixed with gates summing to 1: the base MLP up to f32 rounding.
      const loss = await evaluator.meanLoss();
      assert(Math.abs(loss - baseLoss) < 1e-5, `${method}: ${loss} vs base ${baseLoss}`);
      evaluator.dispose();
      c.dispose();
    }
    plain.dispose();
    model.dispose();
  },
);

gpuTest(
  "PCL: a client mixes everyone's tensors by softmax(−its validation perplexity), idempotently",
  async (engine) => {
    const model = new GPT2(engine, base.config, base.weights);
    // Three clients train apart from the same start; the server bundles their results.
    const clients = [0, 1, 2].map((id) => client(engine, model, "pcl", { id }));
    const results = [];
    for (const c of clients) results.push(await c.fit(1, 2, () => {}));
    const candidates = results.map((bytes) => decodeMessage(bytes).tensors);
    const options = resolveTrainOptions({ method: "pcl", clients: 3 });
    const guard = new Guard(options, Infinity, shapesOf(candidates[0]));
    const strategy = new PclStrategy(new Map(), guard);
    const outcome = strategy.aggregateFit(1, results.map((bytes, client) => ({ client, bytes })));
    assertEquals(outcome, { refusals: [], kept: null });
    const bundle = strategy.configureFit(2, [0]).get(0)!.parameters;

    // Each candidate's perplexity on client 0's first 4 validation batches, measured apart: a
    // plain (non-bundle) message loads it into a fresh client 0.
    const { batch: B, seq: T } = SCHEDULE;
    const probe = client(engine, model, "pcl", { id: 0 });
    const windows = probe.evaluator(probe.data.router.subarray(0, 4 * B * T + 1));
    const perplexity: number[] = [];
    for (const tensors of candidates) {
      await probe.receive(encodeMessage({ round: 1, sender: "server", trainTokens: 0, tensors }));
      perplexity.push(Math.exp(await windows.meanLoss()));
    }
    const raw = perplexity.map((p) => Math.exp(Math.min(...perplexity) - p));
    const weights = raw.map((w) => w / raw.reduce((a, b) => a + b, 0));
    assert(new Set(perplexity).size === 3, `candidates differ: ${perplexity}`);

    const mixer = clients[0];
    await mixer.receive(bundle);
    assertEquals(mixer.mixWeights, weights);
    const mixed = await mixer.adapters.values();
    for (const name of candidates[0].keys()) {
      const expected = new Float64Array(mixed.get(name)!.length);
      candidates.forEach((t, j) =>
        t.get(name)!.data.forEach((x, i) => expected[i] += weights[j] * x)
      );
      assert(sameBits(mixed.get(name)!, Float32Array.from(expected)), `${name}: not the mix`);
    }
    // Receiving the same bundle again (evaluation, then the next fit) changes nothing.
    await mixer.receive(bundle);
    for (const [name, v] of await mixer.adapters.values()) {
      assert(sameBits(v, mixed.get(name)!), `${name} changed on a second receive`);
    }
    windows.dispose();
    probe.dispose();
    for (const c of clients) c.dispose();
    model.dispose();
  },
);
