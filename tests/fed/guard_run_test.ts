// A federation that survives bad clients and protects good ones (issue 16), on whole runs of the
// tiny golden model: a malicious client of every kind is refused every round while the honest
// clients end exactly as in a run without it; clients drawn per round leave the others
// untouched and resume bit-identically; DP runs spend a privacy that grows with the rounds,
// report it, and resume bit-identically.
import type { Engine } from "../../engine/device.ts";
import { loadGpt2Checkpoint } from "../../model/gpt2_checkpoint.ts";
import { GPT2 } from "../../model/gpt2.ts";
import { silentProgress } from "../../model/progress.ts";
import { type ClientEndpoint, LocalEndpoint } from "../../fed/endpoint.ts";
import { makeClient, makeStrategy } from "../../fed/factories.ts";
import { decodeMessage, encodeMessage } from "../../fed/message.ts";
import { resolveTrainOptions, type TrainOptions } from "../../fed/options.ts";
import type { MetricRecord, RunEvent } from "../../fed/records.ts";
import { runRounds } from "../../fed/rounds.ts";
import { type Checkpoint, federate } from "../../fed/simulation.ts";
import type { Streams } from "../../fed/streams.ts";
import { assert, assertEquals } from "../assert.ts";
import { gpuTest, Rng } from "../util.ts";

const GOLDEN = new URL("../golden/gpt2-tiny", import.meta.url).pathname;
const base = await loadGpt2Checkpoint(GOLDEN);

function randomStream(seed: number, length = 300): Uint32Array {
  const rng = new Rng(seed);
  return Uint32Array.from({ length }, () => Math.floor(rng.next() * base.config.vocab_size));
}

const CATEGORIES: Streams[] = [0, 1, 2, 3].map((k) => ({
  name: `c${k}`,
  train: randomStream(10 * k + 1),
  val: randomStream(10 * k + 2),
  test: randomStream(10 * k + 3),
}));

function options(extra: Partial<TrainOptions> = {}): TrainOptions {
  return resolveTrainOptions({
    clients: 4,
    model: GOLDEN,
    rounds: 3,
    localSteps: 2,
    routerEvery: 1,
    routerSteps: 1,
    batch: 2,
    seq: 8,
    rank: 2,
    alpha: 4,
    out: "unused",
    ...extra,
  });
}

/** What a run recorded, and the state after each round. */
interface Ran {
  records: MetricRecord[];
  events: RunEvent[];
  rounds: Checkpoint[];
  adapters: Map<string, Float32Array>[];
}

async function simulate(
  engine: Engine,
  o: TrainOptions,
  categories: Streams[],
  { resume, stopAfterRound }: { resume?: Checkpoint; stopAfterRound?: number } = {},
): Promise<Ran> {
  const ran: Ran = { records: [], events: [], rounds: [], adapters: [] };
  const result = await federate(engine, { options: o, ...base, categories, resume }, {
    progress: silentProgress(),
    record: (m) =>
      Promise.resolve(void ran.records.push({ ...m, ppl: Math.exp(m.loss), wall_s: 0 })),
    event: (e) => Promise.resolve(void ran.events.push(e)),
    roundDone: (checkpoint) => Promise.resolve(void ran.rounds.push(checkpoint)),
    stopAfterRound,
  });
  ran.adapters = result.adapters.map((a) => a.values);
  return ran;
}

const finalTest = (records: MetricRecord[], client: number) =>
  records.findLast((r) => r.split === "test" && r.client === client)!.loss;

/** How a malicious client corrupts its honest result. */
const ATTACKS: Record<string, (bytes: Uint8Array, round: number) => Uint8Array> = {
  nan: (bytes) => tamper(bytes, (m) => m.tensors.values().next().value!.data.fill(NaN, 0, 3)),
  inf: (bytes) => tamper(bytes, (m) => m.tensors.values().next().value!.data.fill(Infinity, 5, 6)),
  "wrong shape": (bytes) =>
    tamper(bytes, (m) => {
      const [name, t] = m.tensors.entries().next().value!;
      m.tensors.set(name, { shape: [t.data.length], data: t.data });
    }),
  "extra name": (bytes) =>
    tamper(bytes, (m) => {
      const t = m.tensors.get("h.0.mlp.experts.0.c_fc.lora_A")!;
      m.tensors.set("h.0.mlp.experts.1.c_fc.lora_A", t);
    }),
  "missing name": (bytes) => tamper(bytes, (m) => m.tensors.delete("h.1.attn.c_proj.lora_B")),
  "norm 1e6": (bytes) =>
    tamper(bytes, (m) => {
      for (const t of m.tensors.values()) t.data.forEach((x, i) => t.data[i] = x * 1e6 + 1e3);
    }),
  "stale round": (bytes, round) => tamper(bytes, (m) => m.round = round - 1),
  "truncated": (bytes) => bytes.subarray(0, bytes.length - 17),
};

/** The message of `bytes`, changed (the encoder writes whatever it is given, NaN included). */
function tamper(bytes: Uint8Array, change: (m: ReturnType<typeof decodeMessage>) => void) {
  const message = decodeMessage(bytes);
  change(message);
  return encodeMessage(message);
}

/** Client 3 behaving as `attack` says; its evaluations are honest. */
class MaliciousEndpoint implements ClientEndpoint {
  constructor(
    readonly inner: LocalEndpoint,
    readonly attack: (b: Uint8Array, r: number) => Uint8Array,
  ) {}
  get id() {
    return this.inner.id;
  }
  get name() {
    return this.inner.name;
  }
  evaluate(round: number, parameters: Uint8Array | null) {
    return this.inner.evaluate(round, parameters);
  }
  async fit(...args: Parameters<ClientEndpoint["fit"]>) {
    const reply = await this.inner.fit(...args);
    return { ...reply, result: this.attack(reply.result, args[0]) };
  }
}

gpuTest(
  "a malicious client of every kind is refused every round; the others end as without it",
  async (engine) => {
    const honest = await simulate(engine, options({ clients: 3 }), CATEGORIES.slice(0, 3));
    const model = new GPT2(engine, base.config, base.weights);
    const o = options();
    for (const [kind, attack] of Object.entries(ATTACKS)) {
      const clients = CATEGORIES.map((data, id) => makeClient(engine, model, o, data, id));
      const locals = clients.map((c) => new LocalEndpoint(c, [CATEGORIES[c.id].test]));
      const endpoints: ClientEndpoint[] = [
        ...locals.slice(0, 3),
        new MaliciousEndpoint(locals[3], attack),
      ];
      const records: MetricRecord[] = [], events: RunEvent[] = [];
      await runRounds({
        options: o,
        strategy: makeStrategy(o, base.config),
        endpoints,
        testIds: [[0], [1], [2], [3]],
        startRound: 0,
      }, {
        progress: silentProgress(),
        record: (m) => Promise.resolve(void records.push({ ...m, ppl: 0, wall_s: 0 })),
        event: (e) => Promise.resolve(void events.push(e)),
        roundDone: () => Promise.resolve(),
      });
      const refused = events.filter((e) => e.event === "refused");
      assertEquals(refused.map((e) => [e.round, "client" in e && e.client]), [[1, 3], [2, 3], [
        3,
        3,
      ]], kind);
      for (const client of [0, 1, 2]) {
        assertEquals(
          finalTest(records, client),
          finalTest(honest.records, client),
          `${kind}: client ${client}`,
        );
      }
      for (const e of locals) e.dispose();
      for (const c of clients) c.dispose();
    }
    model.dispose();
  },
);

const sameBits = (a: Float32Array, b: Float32Array) =>
  a.length === b.length && a.every((x, i) => Object.is(x, b[i]));

function assertSameAdapters(
  a: Map<string, Float32Array>[],
  b: Map<string, Float32Array>[],
  what: string,
) {
  assertEquals(a.length, b.length);
  a.forEach((values, c) => {
    for (const [name, v] of values) {
      assert(sameBits(v, b[c].get(name)!), `${what}: client ${c} ${name}`);
    }
  });
}

gpuTest(
  "clients drawn per round: the draw is recorded, the others keep their state, resume is exact",
  async (engine) => {
    const o = options({ clientsPerRound: 2 });
    const straight = await simulate(engine, o, CATEGORIES);
    const draws = straight.events.filter((e) => e.event === "sampled");
    assertEquals(draws.map((e) => e.round), [1, 2, 3]);
    for (const draw of draws) {
      assert("clients" in draw && draw.clients.length === 2, JSON.stringify(draw));
      const before = draw.round === 1 ? null : straight.rounds[draw.round - 2];
      const after = straight.rounds[draw.round - 1];
      for (let c = 0; c < 4; c++) {
        const trained = draw.clients.includes(c);
        const steps = (before?.clients[c].step ?? 0) + (trained ? o.localSteps : 0);
        assertEquals(after.clients[c].step, steps, `round ${draw.round} client ${c}`);
        if (trained || !before) continue;
        // Not drawn: its own optimiser state and batch streams are as they were.
        assertEquals(after.clients[c].trainRng, before.clients[c].trainRng);
        assertEquals(after.clients[c].experts.step, before.clients[c].experts.step);
      }
      assertEquals(
        straight.records.filter((r) => r.split === "train" && r.round === draw.round).map((r) =>
          r.client
        ),
        draw.clients,
      );
    }
    const half = await simulate(engine, o, CATEGORIES, { stopAfterRound: 1 });
    const resumed = await simulate(engine, o, CATEGORIES, { resume: half.rounds[0] });
    assertSameAdapters(resumed.adapters, straight.adapters, "resumed");
  },
);

for (const dp of ["central", "local"] as const) {
  gpuTest(
    `${dp} DP: ε grows every round and is reported; the run resumes bit-identically`,
    async (engine) => {
      const o = options({ dp, dpClip: 0.5, dpNoise: 1.1, dpSeed: 3 });
      const straight = await simulate(engine, o, CATEGORIES);
      const spent = straight.events.filter((e) => e.event === "privacy").map((e) =>
        "epsilon" in e ? e.epsilon : NaN
      );
      assertEquals(spent.length, 3);
      assert(spent.every((eps, i) => eps > 0 && (i === 0 || eps > spent[i - 1])), `ε ${spent}`);
      const half = await simulate(engine, o, CATEGORIES, { stopAfterRound: 2 });
      const resumed = await simulate(engine, o, CATEGORIES, { resume: half.rounds[1] });
      assertSameAdapters(resumed.adapters, straight.adapters, `${dp} DP resumed`);
      // The noise moved the result: the same run without DP ends elsewhere.
      const plain = await simulate(engine, options(), CATEGORIES);
      assert(
        !sameBits(
          plain.adapters[0].values().next().value!,
          straight.adapters[0].values().next().value!,
        ),
      );
    },
  );
}
