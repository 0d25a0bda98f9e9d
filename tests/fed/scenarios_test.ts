// The federated scenarios: one category per client, split by document, deterministic, capped,
// disjoint, and (ood) one shared validation/test mix with every category equally represented.
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { readPretrainCorpora } from "../../fed/corpora.ts";
import {
  type ClientDocuments,
  IID_MAX_CLIENTS,
  loadScenario,
  loadScenarioDocuments,
  type Scenario,
  scenarioClients,
  SCENARIOS,
  seedDealsDocuments,
  SPAM_BODIES_IN_HAM,
  TEST_CAP_CHARS,
  TRAIN_CAP_CHARS,
  VAL_CAP_CHARS,
} from "../../fed/scenarios.ts";

const NAMES: Record<Scenario, string[]> = {
  topics: ["press", "learned", "fiction", "nonfiction"],
  languages: ["en", "fr", "es", "id"],
  domains: ["fiction", "scripture", "spam", "code"],
  iid: ["iid0", "iid1", "iid2", "iid3"],
};

// Loading takes up to ~1 s; tests that do not check determinism share one load per setting.
const loaded = new Map<string, Promise<ClientDocuments[]>>();
function load(scenario: Scenario, clients = 4, ood = false, seed = 0) {
  const key = JSON.stringify([scenario, clients, ood, seed]);
  if (!loaded.has(key)) loaded.set(key, loadScenarioDocuments(scenario, { clients, ood, seed }));
  return loaded.get(key)!;
}

const chars = (docs: { text: string }[]) => docs.reduce((n, d) => n + d.text.length, 0);
const SPLITS = ["train", "val", "test"] as const;
const CAPS = { train: TRAIN_CAP_CHARS, val: VAL_CAP_CHARS, test: TEST_CAP_CHARS };

Deno.test("every scenario gives its clients' names and splits filled up to their caps", async () => {
  for (const scenario of SCENARIOS) {
    assertEquals(scenarioClients(scenario), 4);
    const clients = await load(scenario);
    assertEquals(clients.map((c) => c.name), NAMES[scenario]);
    for (const client of clients) {
      for (const split of SPLITS) {
        const docs = client[split], where = `${scenario}/${client.name}/${split}`;
        // Taken until the cap: without its last document a split is under it.
        assert(chars(docs.slice(0, -1)) < CAPS[split], `${where} passes its cap`);
        assert(chars(docs) > CAPS[split] / 2, `${where} has only ${chars(docs)} characters`);
      }
    }
  }
});

Deno.test("loadScenario gives the same documents as text", async () => {
  const texts = await loadScenario("domains", { clients: 4, ood: false, seed: 0 });
  const docs = await load("domains");
  assertEquals(
    texts,
    docs.map((c) => ({
      name: c.name,
      train: c.train.map((d) => d.text),
      val: c.val.map((d) => d.text),
      test: c.test.map((d) => d.text),
    })),
  );
});

Deno.test("no document is in two splits or two clients, by id or by text", async () => {
  const settings: [Scenario, number][] = [...SCENARIOS.map((s): [Scenario, number] => [s, 4])];
  for (const [scenario, clients] of [...settings, ["iid", IID_MAX_CLIENTS] as const]) {
    const all = (await load(scenario, clients)).flatMap((c) => SPLITS.flatMap((s) => c[s]));
    assertEquals(new Set(all.map((d) => d.id)).size, all.length, `${scenario}: an id twice`);
    assertEquals(new Set(all.map((d) => d.text)).size, all.length, `${scenario}: a text twice`);
  }
});

Deno.test("a verse group is in the same split in every language", async () => {
  const splitOf = new Map<string, string>();
  for (const client of await load("languages")) {
    for (const split of ["val", "test"] as const) {
      for (const { id } of client[split]) splitOf.set(id.replace(`/${client.name}/`, "/"), split);
    }
  }
  for (const client of await load("languages")) {
    for (const { id } of client.train) {
      assert(!splitOf.has(id.replace(`/${client.name}/`, "/")), `${id} is held out elsewhere`);
    }
  }
});

Deno.test("the same options give the same corpora; the seed only deals iid", async () => {
  for (const scenario of SCENARIOS) {
    const options = { clients: 4, ood: false, seed: 0 };
    const first = await loadScenario(scenario, options);
    assertEquals(await loadScenario(scenario, options), first);
    const reseeded = await loadScenario(scenario, { ...options, seed: 1 });
    if (seedDealsDocuments(scenario)) {
      assert(JSON.stringify(reseeded) !== JSON.stringify(first), `${scenario} ignores the seed`);
      // Another dealing of the same test documents (16 clients stay under the caps).
      const ids = async (seed: number) =>
        new Set((await load("iid", 16, false, seed)).flatMap((c) => c.test.map((d) => d.id)));
      assertEquals(await ids(1), await ids(2));
    } else {
      assertEquals(reseeded, first, `${scenario} depends on the seed`);
    }
  }
});

Deno.test("fewer clients take the first categories with the same data", async () => {
  for (const scenario of ["topics", "languages", "domains"] as const) {
    const all = await load(scenario);
    assertEquals(await load(scenario, 2), all.slice(0, 2));
  }
  const sixteen = await load("iid", IID_MAX_CLIENTS);
  assertEquals(sixteen.length, 16);
  assert(sixteen.every((c) => c.train.length && c.val.length && c.test.length));
});

Deno.test("ood: each client keeps its train; one val and test set mixes categories evenly", async () => {
  for (const scenario of SCENARIOS) {
    const own = await load(scenario);
    const ood = await load(scenario, 4, true);
    assertEquals(ood.map((c) => c.train), own.map((c) => c.train));
    for (const split of ["val", "test"] as const) {
      assert(ood.every((c) => JSON.stringify(c[split]) === JSON.stringify(ood[0][split])));
      // Characters per category: equal, the smallest category's amount or an equal share of
      // the split's cap, whichever is less (one less where a cut would split a surrogate pair).
      const categoryOf = new Map(own.flatMap((c) => c[split].map((d) => [d.id, c.name])));
      const perCategory = new Map<string, number>();
      for (const doc of ood[0][split]) {
        const category = categoryOf.get(doc.id)!;
        perCategory.set(category, (perCategory.get(category) ?? 0) + doc.text.length);
      }
      const cap = CAPS[split];
      const smallest = Math.min(Math.floor(cap / own.length), ...own.map((c) => chars(c[split])));
      assertEquals([...perCategory.keys()], NAMES[scenario]);
      for (const [category, n] of perCategory) {
        assert(n === smallest || n === smallest - 1, `${scenario} ${split} ${category}: ${n}`);
      }
    }
  }
});

Deno.test("bad scenarios and client counts give clear errors", async () => {
  const options = { clients: 5, ood: false, seed: 0 };
  await assertRejects(() => loadScenario("topics", options), Error, "has 4 categories");
  await assertRejects(() => loadScenario("languages", { ...options, clients: 0 }), Error, "1..4");
  await assertRejects(() => loadScenario("domains", { ...options, clients: 1.5 }), Error, "1.5");
  await assertRejects(() => loadScenario("iid", { ...options, clients: 17 }), Error, "1..16");
  await assertRejects(
    () => loadScenario("news" as Scenario, options),
    Error,
    'unknown scenario "news"',
  );
});

Deno.test("no scenario text is pretraining text; spam bodies repeated in ham are left out", async () => {
  const pretraining = new Set((await readPretrainCorpora()).map((d) => d.text));
  for (const scenario of SCENARIOS) {
    for (const client of await load(scenario)) {
      for (const split of SPLITS) {
        for (const doc of client[split]) {
          assert(!pretraining.has(doc.text), `${doc.id} is in the pretraining text`);
          assert(!SPAM_BODIES_IN_HAM.includes(doc.id), `${doc.id} is listed as ham's`);
        }
      }
    }
  }
});
