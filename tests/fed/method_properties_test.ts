// Each method's defining property (method.md §3–§4), checked on what the clients hold and which
// data each step reads, not on "perplexity is finite and changed":
// - a router step reads the validation stream, or the training stream with routerOnTrain;
// - pFedMoE updates router and experts in one step, on the training stream;
// - FedAvg's (and 2G's) clients hold identical LoRA tensors after every round, 2S's share only
//   the initial sync, Local's clients learn from their own data alone, and centralized training
//   is one client on the pooled stream.
import type { Engine } from "../../engine/device.ts";
import { Tape } from "../../engine/tape.ts";
import { adapterRole, AdapterTensors } from "../../model/adapters.ts";
import { loadGpt2Checkpoint } from "../../model/gpt2_checkpoint.ts";
import { forwardAdapted } from "../../model/comigs.ts";
import { GPT2 } from "../../model/gpt2.ts";
import { TokenBatch } from "../../model/batch.ts";
import { makeClient } from "../../fed/factories.ts";
import type { Method } from "../../fed/methods.ts";
import { resolveTrainOptions, type TrainOptions } from "../../fed/options.ts";
import { type Checkpoint, federate, type FederationResult } from "../../fed/simulation.ts";
import { pool, type Streams } from "../../fed/streams.ts";
import { silentProgress } from "../../model/progress.ts";
import { assert, assertEquals } from "../assert.ts";
import { gpuTest, Rng } from "../util.ts";

const GOLDEN = new URL("../golden/gpt2-tiny", import.meta.url).pathname;
const base = await loadGpt2Checkpoint(GOLDEN);
const V = base.config.vocab_size;
const B = 2, T = 8;

function options(method: Method, extra: Partial<TrainOptions> = {}): TrainOptions {
  return resolveTrainOptions({
    method,
    clients: 2,
    model: GOLDEN,
    rounds: 2,
    localSteps: 2,
    routerEvery: 1,
    routerSteps: 1,
    batch: B,
    seq: T,
    rank: 2,
    alpha: 4,
    out: "unused",
    ...extra,
  });
}

/** A stream of one token repeated: every window drawn from it is the same batch. */
const constant = (id: number, length = 200) => new Uint32Array(length).fill(id);

function randomStream(seed: number, length = 300): Uint32Array {
  const rng = new Rng(seed);
  return Uint32Array.from({ length }, () => Math.floor(rng.next() * V));
}

function category(name: string, seed: number): Streams {
  return {
    name,
    train: randomStream(seed),
    val: randomStream(seed + 1),
    test: randomStream(seed + 2),
  };
}

const sameBits = (a: Float32Array, b: Float32Array) =>
  a.length === b.length && a.every((x, i) => Object.is(x, b[i]));

const maxDiff = (a: Float32Array, b: Float32Array) =>
  a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);

/**
 * The gradient of the training objective with respect to every router, for adapters `values`
 * (client `config`) on a batch of the one token `id`, computed apart from any client.
 */
async function routerGradient(
  engine: Engine,
  model: GPT2,
  config: AdapterTensors["config"],
  values: Map<string, Float32Array>,
  id: number,
): Promise<Float32Array[]> {
  const adapters = new AdapterTensors(engine, base.config, config, values);
  for (const p of adapters.routerParams()) p.requiresGrad = true;
  const batch = new TokenBatch(engine, base.config, B, T);
  batch.set(Array.from({ length: B }, () => new Array(T + 1).fill(id)));
  const tape = new Tape(engine);
  const { objective } = forwardAdapted(tape, model, adapters, batch);
  await engine.run([...tape.forward(), ...tape.backward(objective)]);
  const grads = [];
  for (const p of adapters.routerParams()) grads.push(await engine.readF32(p.grad!));
  tape.dispose();
  batch.dispose();
  for (const p of adapters.routerParams()) p.grad?.dispose();
  adapters.dispose();
  return grads;
}

/** The routers' gradients a client's last step left behind. */
async function clientRouterGrads(engine: Engine, tensors: AdapterTensors): Promise<Float32Array[]> {
  const grads = [];
  for (const p of tensors.routerParams()) grads.push(await engine.readF32(p.grad!));
  return grads;
}

const TRAIN_TOKEN = 5, VALIDATION_TOKEN = 9;

/** One client whose training stream is all TRAIN_TOKEN and validation all VALIDATION_TOKEN. */
function twoStreamClient(engine: Engine, model: GPT2, o: TrainOptions) {
  const data = {
    name: "two-streams",
    train: constant(TRAIN_TOKEN),
    val: constant(VALIDATION_TOKEN),
    test: constant(VALIDATION_TOKEN),
  };
  return makeClient(engine, model, o, data, 0);
}

/** Which token's batch `grads` are the router gradient of (the other one must differ). */
function readToken(
  grads: Float32Array[],
  byToken: Map<number, Float32Array[]>,
): number {
  const distance = (ref: Float32Array[]) =>
    Math.max(...ref.map((r, l) => maxDiff(grads[l], r) / Math.max(...r.map(Math.abs))));
  const [[tokenA, a], [tokenB, b]] = [...byToken];
  const [dA, dB] = [distance(a), distance(b)];
  // The right reference matches to f32 rounding; the wrong one is off by its own size.
  assert(Math.min(dA, dB) < 1e-4 && Math.max(dA, dB) > 1e-2, `distances ${dA}, ${dB}`);
  return dA < dB ? tokenA : tokenB;
}

gpuTest(
  "a router step reads the validation stream; with routerOnTrain the training one",
  async (engine) => {
    const model = new GPT2(engine, base.config, base.weights);
    for (const routerOnTrain of [false, true]) {
      // One expert step (LoRA moves, routers do not), then one router step from the initial
      // routers: the routers' gradient is that of the router batch at (LoRA after, routers init).
      const o = options("comigs-1g1s", { clients: 1, localSteps: 1, routerOnTrain });
      const client = twoStreamClient(engine, model, o);
      const init = await client.adapters.values();
      await client.fit(1, 1, () => {});
      const after = await client.adapters.values();
      const atRouterStep = new Map(
        [...after].map(([name, v]) => [name, adapterRole(name) === "router" ? init.get(name)! : v]),
      );
      const byToken = new Map<number, Float32Array[]>();
      for (const token of [TRAIN_TOKEN, VALIDATION_TOKEN]) {
        byToken.set(
          token,
          await routerGradient(engine, model, client.adapters.config, atRouterStep, token),
        );
      }
      const read = readToken(await clientRouterGrads(engine, client.adapters), byToken);
      assertEquals(
        read,
        routerOnTrain ? TRAIN_TOKEN : VALIDATION_TOKEN,
        `routerOnTrain ${routerOnTrain}`,
      );
      client.dispose();
    }
    model.dispose();
  },
);

gpuTest(
  "pFedMoE updates router and experts in one step, on the training stream",
  async (engine) => {
    const model = new GPT2(engine, base.config, base.weights);
    // routerEvery beyond the run: no separate router phase could explain a router update.
    const o = options("pfedmoe", { clients: 1, localSteps: 1, routerEvery: 1000 });
    const client = twoStreamClient(engine, model, o);
    const init = await client.adapters.values();
    await client.fit(1, 1, () => {});
    const after = await client.adapters.values();
    for (const role of ["router", "generalist", "specialist", "attention"] as const) {
      const moved = [...after].filter(([name]) => adapterRole(name) === role)
        .some(([name, v]) => !sameBits(v, init.get(name)!));
      assert(moved, `the joint step left the ${role} tensors unchanged`);
    }
    // The step's gradient is taken at the initial tensors (router and LoRA together).
    const byToken = new Map<number, Float32Array[]>();
    for (const token of [TRAIN_TOKEN, VALIDATION_TOKEN]) {
      byToken.set(token, await routerGradient(engine, model, client.adapters.config, init, token));
    }
    assertEquals(readToken(await clientRouterGrads(engine, client.adapters), byToken), TRAIN_TOKEN);
    client.dispose();
    model.dispose();
  },
);

/** A whole simulated run, with every client's state after each round. */
async function simulate(
  engine: Engine,
  o: TrainOptions,
  categories: Streams[],
): Promise<{ result: FederationResult; rounds: Checkpoint[] }> {
  const rounds: Checkpoint[] = [];
  const result = await federate(engine, { options: o, ...base, categories }, {
    progress: silentProgress(),
    record: () => Promise.resolve(),
    roundDone: (checkpoint) => {
      rounds.push(checkpoint);
      return Promise.resolve();
    },
  });
  return { result, rounds };
}

const CATEGORIES = [category("a", 10), category("b", 20)];

gpuTest(
  "FedAvg and 2G: after every round all clients hold the same LoRA tensors",
  async (engine) => {
    for (const method of ["fedavg", "comigs-2g"] as const) {
      const { rounds } = await simulate(engine, options(method), CATEGORIES);
      assertEquals(rounds.length, 2);
      for (const { round, clients, global } of rounds) {
        const [first, second] = clients.map((c) => c.adapters);
        for (const [name, v] of first) {
          const where = `${method} round ${round}: ${name}`;
          if (adapterRole(name) === "router") {
            // FedAvg has no router (frozen at zero); 2G's routers learn apart, on each client.
            if (method === "fedavg") assert(v.every((x) => x === 0), where);
            else assert(!sameBits(v, second.get(name)!), `${where} is shared`);
            continue;
          }
          assert(sameBits(v, second.get(name)!), `${where} differs between the clients`);
          assert(sameBits(v, global!.get(name)!.data), `${where} is not the average`);
        }
      }
    }
  },
);

gpuTest(
  "2S shares nothing after the initial sync; Local clients learn from their own data alone",
  async (engine) => {
    const twoS = await simulate(engine, options("comigs-2s"), CATEGORIES);
    assertEquals(twoS.result.global, null);
    const sync = twoS.rounds[0].global!;
    for (const { global } of twoS.rounds) {
      for (const [name, t] of global!) assert(sameBits(t.data, sync.get(name)!.data), name);
    }
    // Client 0 of a 2-client Local run ends exactly as a 1-client run on its data, and as a run
    // whose other client holds other data.
    const both = await simulate(engine, options("local"), CATEGORIES);
    const alone = await simulate(engine, options("local", { clients: 1 }), [CATEGORIES[0]]);
    const otherPeer = await simulate(engine, options("local"), [CATEGORIES[0], category("c", 30)]);
    for (const [name, v] of both.result.adapters[0].values) {
      assert(sameBits(v, alone.result.adapters[0].values.get(name)!), `${name}: not the solo run`);
      assert(sameBits(v, otherPeer.result.adapters[0].values.get(name)!), `${name}: peer leaked`);
    }
    assert(
      [...both.result.adapters[1].values].some(([name, v]) =>
        !sameBits(v, otherPeer.result.adapters[1].values.get(name)!)
      ),
      "client 1's data made no difference to it",
    );
  },
);

gpuTest(
  "centralized training is one client on the pooled stream, taking every client's steps",
  async (engine) => {
    const central = await simulate(engine, options("centralized"), CATEGORIES);
    const pooled = await simulate(
      engine,
      options("local", { clients: 1, localSteps: 4 }),
      [pool(CATEGORIES)],
    );
    assertEquals(central.result.adapters.length, 1);
    for (const [name, v] of central.result.adapters[0].values) {
      assert(sameBits(v, pooled.result.adapters[0].values.get(name)!), `${name} differs`);
    }
  },
);
