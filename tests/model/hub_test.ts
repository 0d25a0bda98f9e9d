import { assert, assertEquals, assertRejects, assertThrows } from "../assert.ts";
import { downloadModel, HubError, type HubProgress, parseHubRef } from "../../model/hub.ts";
import { loadLlamaCheckpoint } from "../../model/llama_checkpoint.ts";
import {
  llamaConfigJson,
  llamaParameterShapes,
  parseLlamaConfig,
} from "../../model/llama_config.ts";
import { loadHfTokenizer } from "../../model/hf_tokenizer.ts";
import type { NamedTensor } from "../../model/safetensors.ts";
import { Rng } from "../util.ts";
import { halfExactValues, hfSafetensorsBytes } from "./hf_files.ts";
import { gitSha1, LocalHub, type LocalRepo, sha256 } from "./local_hub.ts";

const COMMIT_A = "a".repeat(40);
const COMMIT_B = "b".repeat(40);
const encoder = new TextEncoder();
const TOKENIZERS = new URL("../golden/hf_tokenizers/llama3_style/", import.meta.url);

/** A tiny Llama in two BF16 shards, with the files a Hub repository holds. */
function modelFiles(seed: number): Map<string, Uint8Array> {
  const config = parseLlamaConfig({
    model_type: "llama",
    hidden_size: 8,
    intermediate_size: 12,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 1003,
    tie_word_embeddings: true,
    eos_token_id: 1001,
  }, "config.json");
  const rng = new Rng(seed);
  const tensors = [...llamaParameterShapes(config)].map(([name, shape]): [string, NamedTensor] => [
    name,
    { shape, data: halfExactValues(rng, shape.reduce((a, b) => a * b, 1)) },
  ]);
  const half = Math.ceil(tensors.length / 2);
  const shards = [tensors.slice(0, half), tensors.slice(half)];
  const names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
  const weightMap = Object.fromEntries(
    shards.flatMap((shard, k) => shard.map(([name]) => [name, names[k]])),
  );
  return new Map([
    ["config.json", encoder.encode(JSON.stringify(llamaConfigJson(config)))],
    ["model.safetensors.index.json", encoder.encode(JSON.stringify({ weight_map: weightMap }))],
    [names[0], hfSafetensorsBytes(shards[0], "BF16")],
    [names[1], hfSafetensorsBytes(shards[1], "BF16")],
    ["tokenizer.json", Deno.readFileSync(new URL("tokenizer.json", TOKENIZERS))],
    ["tokenizer_config.json", Deno.readFileSync(new URL("tokenizer_config.json", TOKENIZERS))],
    ["README.md", encoder.encode("# not downloaded\n")],
  ]);
}

const LFS = new Set([
  "model-00001-of-00002.safetensors",
  "model-00002-of-00002.safetensors",
  "tokenizer.json",
]);
const SHARD = "model-00002-of-00002.safetensors";

function repo(extra: Partial<LocalRepo> = {}): LocalRepo {
  return {
    refs: new Map([["main", COMMIT_A], ["v1", COMMIT_B]]),
    commits: new Map([[COMMIT_A, modelFiles(1)], [COMMIT_B, modelFiles(2)]]),
    lfs: LFS,
    ...extra,
  };
}

async function withHub(fn: (hub: LocalHub, cacheDir: string) => Promise<void>): Promise<void> {
  const hub = new LocalHub();
  const cacheDir = await Deno.makeTempDir();
  try {
    hub.addRepo("org/tiny", repo());
    await fn(hub, cacheDir);
  } finally {
    await hub.close();
    await Deno.remove(cacheDir, { recursive: true });
  }
}

Deno.test("hf: references parse; bad ones are refused with the expected form", () => {
  assertEquals(parseHubRef("hf:HuggingFaceTB/SmolLM2-135M"), {
    repo: "HuggingFaceTB/SmolLM2-135M",
    revision: "main",
  });
  assertEquals(parseHubRef("hf:org/m.v2@refs/pr/1"), { repo: "org/m.v2", revision: "refs/pr/1" });
  assertEquals(parseHubRef("models/base"), null);
  for (
    const bad of ["hf:tiny", "hf:a/b/c", "hf:../x", "hf:org/m@", "hf:org/m@a@b", "hf:org/m@../x"]
  ) {
    assertThrows(
      () => parseHubRef(bad),
      HubError,
      "(expected hf:ORG/NAME or hf:ORG/NAME@REVISION)",
    );
  }
});

Deno.test("a sharded model downloads into huggingface_hub's layout and loads", async () => {
  await withHub(async (hub, cacheDir) => {
    const events: HubProgress[] = [];
    const dir = await downloadModel("hf:org/tiny", {
      cacheDir,
      endpoint: hub.endpoint,
      token: null,
      onProgress: (p) => events.push(p),
    });
    const root = `${cacheDir}/models--org--tiny`;
    assertEquals(dir, `${root}/snapshots/${COMMIT_A}`);
    assertEquals(await Deno.readTextFile(`${root}/refs/main`), COMMIT_A);
    const files = modelFiles(1);
    files.delete("README.md");
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [...files.keys()].sort());
    for (const [name, bytes] of files) {
      const hash = LFS.has(name) ? sha256(bytes) : gitSha1(bytes);
      assertEquals(await Deno.readLink(`${dir}/${name}`), `../../blobs/${hash}`);
      assertEquals(await Deno.readFile(`${dir}/${name}`), bytes);
      const mine = events.filter((e) => e.file === name);
      assertEquals(mine.at(-1), { file: name, bytesDone: bytes.length, bytesTotal: bytes.length });
      assert(mine.every((e, i) => i === 0 || e.bytesDone >= mine[i - 1].bytesDone), "monotone");
    }
    // Everything at one commit: the API once, then each file by commit; storage got no token.
    assertEquals(hub.log[0].path, "/api/models/org/tiny/revision/main");
    assert(
      hub.log.filter((r) => r.server === "hub").slice(1).every((r) => r.path.includes(COMMIT_A)),
    );
    const checkpoint = await loadLlamaCheckpoint(dir);
    assertEquals(checkpoint.config.num_hidden_layers, 2);
    const tokenizer = await loadHfTokenizer(dir, { vocabSize: checkpoint.config.vocab_size });
    assertEquals(tokenizer.eotId, 1001);

    // A second call finds every blob in the cache and downloads nothing.
    const before = hub.log.length;
    assertEquals(await downloadModel("hf:org/tiny", { cacheDir, endpoint: hub.endpoint }), dir);
    assertEquals(hub.log.slice(before).map((r) => r.path), ["/api/models/org/tiny/revision/main"]);
  });
});

Deno.test("a token goes to the Hub only, never to the storage host it redirects to", async () => {
  await withHub(async (hub, cacheDir) => {
    hub.addRepo("org/private", repo({ access: "private" }));
    const dir = await downloadModel("hf:org/private@v1", {
      cacheDir,
      endpoint: hub.endpoint,
      token: "hf_valid",
    });
    assertEquals(dir, `${cacheDir}/models--org--private/snapshots/${COMMIT_B}`);
    assert(
      hub.log.filter((r) => r.server === "hub").every((r) => r.authorization === "Bearer hf_valid"),
    );
    assert(hub.log.some((r) => r.server === "storage"), "LFS files came from storage");
    assert(hub.log.filter((r) => r.server === "storage").every((r) => r.authorization === null));
  });
});

Deno.test("HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are honoured", async () => {
  await withHub(async (hub, cacheDir) => {
    hub.addRepo("org/private", repo({ access: "private" }));
    const saved = ["HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE"].map((name) =>
      [name, Deno.env.get(name)] as const
    );
    try {
      Deno.env.set("HF_TOKEN", "hf_valid");
      Deno.env.set("HF_ENDPOINT", hub.endpoint + "/");
      Deno.env.set("HF_HUB_CACHE", cacheDir);
      const dir = await downloadModel("hf:org/private");
      assertEquals(dir, `${cacheDir}/models--org--private/snapshots/${COMMIT_A}`);
      Deno.env.set("HF_HUB_OFFLINE", "1");
      Deno.env.set("HF_ENDPOINT", "http://127.0.0.1:9"); // nothing listens there
      const before = hub.log.length;
      assertEquals(await downloadModel("hf:org/private"), dir);
      assertEquals(hub.log.length, before);
    } finally {
      for (const [name, value] of saved) {
        if (value === undefined) Deno.env.delete(name);
        else Deno.env.set(name, value);
      }
    }
  });
});

Deno.test("an interrupted download resumes with a Range request, within a run and across runs", async () => {
  await withHub(async (hub, cacheDir) => {
    const shard = modelFiles(1).get(SHARD)!;
    hub.cut = { sha256: sha256(shard), bytes: 300, times: 2 };
    const dir = await downloadModel("hf:org/tiny", { cacheDir, endpoint: hub.endpoint });
    assertEquals(await Deno.readFile(`${dir}/${SHARD}`), shard);
    const ranges = hub.log.filter((r) => r.path === `/${sha256(shard)}`).map((r) => r.range);
    assertEquals(ranges, [null, "bytes=300-", "bytes=600-"]);

    // A run killed mid-file leaves blobs/{hash}.incomplete; the next run continues it.
    const other = `${cacheDir}/other`;
    const blob = `${other}/models--org--tiny/blobs/${sha256(shard)}`;
    await Deno.mkdir(`${other}/models--org--tiny/blobs`, { recursive: true });
    await Deno.writeFile(`${blob}.incomplete`, shard.subarray(0, 1000));
    const events: HubProgress[] = [];
    await downloadModel("hf:org/tiny", {
      cacheDir: other,
      endpoint: hub.endpoint,
      onProgress: (p) => events.push(p),
    });
    assertEquals(hub.log.at(-1)?.range, "bytes=1000-");
    assertEquals(events.find((e) => e.file === SHARD)?.bytesDone, 1000);
    assertEquals(await Deno.readFile(blob), shard);
  });
});

Deno.test("a connection that keeps breaking ends in an error that says how to resume", async () => {
  await withHub(async (hub, cacheDir) => {
    const shard = modelFiles(1).get(SHARD)!;
    hub.cut = { sha256: sha256(shard), bytes: 10, times: 99 };
    await assertRejects(
      () => downloadModel("hf:org/tiny", { cacheDir, endpoint: hub.endpoint }),
      HubError,
      `hf:org/tiny@main: ${SHARD}: the connection broke 5 times`,
    );
    const partial = `${cacheDir}/models--org--tiny/blobs/${sha256(shard)}.incomplete`;
    assertEquals((await Deno.stat(partial)).size, 50);
  });
});

Deno.test("corrupted bytes are refused and discarded (LFS sha256 and git sha1 alike)", async () => {
  await withHub(async (hub, cacheDir) => {
    const files = modelFiles(1);
    const shard = files.get(SHARD)!;
    const flipped = shard.slice();
    flipped[flipped.length - 1] ^= 1;
    hub.corrupt.set(`/${sha256(shard)}`, flipped);
    const options = { cacheDir, endpoint: hub.endpoint };
    await assertRejects(
      () => downloadModel("hf:org/tiny", options),
      HubError,
      `${SHARD}: the downloaded bytes hash to ${sha256(flipped)}, but the Hub lists ` +
        `${sha256(shard)}; the file was discarded`,
    );
    const blobs = `${cacheDir}/models--org--tiny/blobs`;
    assert(![...Deno.readDirSync(blobs)].some((e) => e.name.startsWith(sha256(shard))));

    hub.corrupt.clear();
    await Deno.remove(`${cacheDir}/models--org--tiny`, { recursive: true }); // config.json was fine
    const config = files.get("config.json")!;
    hub.corrupt.set(
      `/org/tiny/resolve/${COMMIT_A}/config.json`,
      encoder.encode("{}".padEnd(config.length)),
    );
    await assertRejects(
      () => downloadModel("hf:org/tiny", options),
      HubError,
      `config.json: the downloaded bytes hash to`,
    );
    hub.corrupt.clear();
    await downloadModel("hf:org/tiny", options); // and then it comes right
  });
});

Deno.test("offline: the cache only, with one error when it lacks the model", async () => {
  await withHub(async (hub, cacheDir) => {
    const offline = { cacheDir, endpoint: "http://127.0.0.1:9", offline: true };
    await assertRejects(
      () => downloadModel("hf:org/tiny", offline),
      HubError,
      `hf:org/tiny@main: offline, and the cache (${cacheDir}/models--org--tiny) has no snapshot`,
    );
    const dir = await downloadModel("hf:org/tiny", { cacheDir, endpoint: hub.endpoint });
    assertEquals(await downloadModel("hf:org/tiny", offline), dir);
    assertEquals(await downloadModel(`hf:org/tiny@${COMMIT_A}`, offline), dir);
    await assertRejects(() => downloadModel("hf:org/tiny@v1", offline), HubError, "no snapshot");
    await Deno.remove(`${dir}/${SHARD}`);
    await assertRejects(
      () => downloadModel("hf:org/tiny", offline),
      HubError,
      `offline, and the cached snapshot ${dir} lacks ${SHARD}: run once without HF_HUB_OFFLINE`,
    );
  });
});

Deno.test("the Hub's refusals: token, gated, unknown repository, revision or file", async () => {
  await withHub(async (hub, cacheDir) => {
    hub.addRepo("org/private", repo({ access: "private" }));
    hub.addRepo("org/gated", repo({ access: "gated" }));
    const noTokenizer = modelFiles(1);
    noTokenizer.delete("tokenizer.json");
    hub.addRepo("org/notok", repo({ commits: new Map([[COMMIT_A, noTokenizer]]) }));
    const get = (spec: string, token: string | null) =>
      downloadModel(spec, { cacheDir, endpoint: hub.endpoint, token });
    const cases: [string, string | null, string][] = [
      [
        "hf:org/private",
        null,
        'repository "org/private" not found or not accessible (no token was sent: set HF_TOKEN',
      ],
      [
        "hf:org/private",
        "hf_wrong",
        "not accessible (the token (HF_TOKEN) was refused or lacks access to this repository)",
      ],
      ["hf:org/gated", "hf_valid", "gated repository: accept its terms on the Hub"],
      ["hf:org/missing", null, 'repository "org/missing" not found'],
      ["hf:org/tiny@nope", null, 'revision "nope" not found [HTTP 404 from'],
      ["hf:org/notok", null, "hf:org/notok@main: the repository has no tokenizer.json"],
    ];
    for (const [spec, token, message] of cases) {
      await assertRejects(() => get(spec, token), HubError, message);
    }
    await assertRejects(
      () => downloadModel("hf:org/tiny", { cacheDir, endpoint: "http://127.0.0.1:9" }),
      HubError,
      "cannot reach http://127.0.0.1:9",
    );
  });
});
