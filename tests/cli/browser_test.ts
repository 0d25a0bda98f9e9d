// `deno task browser`: a tiny CoMiGS run computed in headless Chromium's WebGPU (SwiftShader here)
// matches the same run computed by Deno's WebGPU (lavapipe here) record by record, and writes the
// same run folder, on the shipped GPT-2 base and on a Llama-family one; a tab joins a networked
// run beside a Deno client (on either base) and the run matches the simulated one; its flags are
// train's minus --resume (or --join's), and a missing Chromium is a clear error raised before
// anything is written.
import { UsageError } from "../../cli/args.ts";
import { joinInBrowser, parseInvocation, runInBrowser } from "../../cli/browser.ts";
import { joinRun } from "../../fed/join.ts";
import { ProgressBar } from "../../cli/progress.ts";
import { metricsOnly, parseMetrics } from "../../fed/records.ts";
import { runTraining, serveRun } from "../../fed/run.ts";
import { loadAdapters } from "../../model/adapters.ts";
import { readConfig } from "../../model/checkpoint.ts";
import { readSafetensors } from "../../model/safetensors.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "../assert.ts";
import { corpora, MODEL, options } from "../fed/tiny_run.ts";
import { writeTinyLlama } from "../model/tiny_llama.ts";
import { gpuTest } from "../util.ts";

const CHROMIUM = Deno.env.get("CHROMIUM") ?? "/usr/bin/chromium";
const quiet = () => new ProgressBar(0, 0, false, () => {});

// Two WebGPU implementations (SwiftShader in Chromium, lavapipe in Deno) run the same WGSL in
// float32 but with their own exp/tanh and fused multiply-adds: measured differences are ~1e-8 in
// a test loss and ~5e-7 in a training loss after a few steps. 1e-5 leaves room for that and
// still catches any real difference (a wrong gradient or a skipped step moves losses by >1e-3).
const LOSS_TOLERANCE = 1e-5;
const WEIGHT_TOLERANCE = 1e-4;

/** The metric records of run folders `a` and `b` agree in order and within LOSS_TOLERANCE. */
async function closeRecords(a: string, b: string): Promise<void> {
  const records = async (out: string) =>
    metricsOnly(parseMetrics(await Deno.readTextFile(`${out}/metrics.jsonl`)));
  const [x, y] = [await records(a), await records(b)];
  const keys = (list: typeof x) => list.map((r) => [r.round, r.step, r.client, r.split]);
  assertEquals(keys(x), keys(y));
  for (const [i, r] of x.entries()) {
    assert(
      Math.abs(r.loss - y[i].loss) <= LOSS_TOLERANCE,
      `record ${i} (${r.split}, round ${r.round}, client ${r.client}): ${r.loss} in ${a}, ${
        y[i].loss
      } in ${b}`,
    );
  }
}

/** Adapter files `a` and `b` (on base `model`) hold the same tensors within WEIGHT_TOLERANCE. */
async function closeAdapters(a: string, b: string, model = MODEL): Promise<void> {
  const base = await readConfig(model);
  const [x, y] = [await loadAdapters(a, base), await loadAdapters(b, base)];
  assertEquals(x.config, y.config);
  for (const [name, values] of y.values) {
    const other = x.values.get(name)!;
    const worst = values.reduce((m, v, k) => Math.max(m, Math.abs(v - other[k])), 0);
    assert(worst <= WEIGHT_TOLERANCE, `${a} ${name}: differs by ${worst}`);
  }
}

gpuTest(
  "a run in headless Chromium matches the same run in Deno, record by record",
  async (engine) => {
    const dir = await Deno.makeTempDir();
    const inBrowser = options(`${dir}/browser`, "comigs-1g1s", 2);
    const inDeno = options(`${dir}/deno`, "comigs-1g1s", 2);
    const browser = await runInBrowser(inBrowser, {
      serve: false,
      port: 0,
      chromium: CHROMIUM,
      overwrite: false,
    }, {
      progress: quiet(),
      corpora: corpora(),
    });
    const deno = await runTraining(engine, { options: inDeno }, {
      progress: quiet(),
      corpora: corpora(),
    });

    assertEquals(browser.summary.clients.map((c) => [c.name, c.train_tokens]), [
      ["numbers", deno.summary.clients[0].train_tokens],
      ["words", deno.summary.clients[1].train_tokens],
    ]);
    await closeRecords(inBrowser.out, inDeno.out);
    const summary = JSON.parse(await Deno.readTextFile(`${inBrowser.out}/summary.json`));
    assertEquals(summary, browser.summary);

    // The same files, with the same tensors (to float32 round-off of two implementations).
    for (const id of [0, 1]) {
      const path = (out: string) => `${out}/clients/${id}/adapters.safetensors`;
      await closeAdapters(path(inBrowser.out), path(inDeno.out));
    }
    const global = async (out: string) =>
      [...(await readSafetensors(`${out}/global.safetensors`)).tensors.keys()].sort();
    assertEquals(await global(inBrowser.out), await global(inDeno.out));
    await Deno.remove(dir, { recursive: true });
  },
);

// A Llama-family base (GQA, RoPE, SwiGLU experts; a Hugging Face tokenizer.json, read by this
// process, which sends the tab token streams) runs in the tab as in Deno: the SwiGLU mixture's
// backward kernel is split to fit the tab's 10 storage buffers per shader stage.
gpuTest(
  "a run on a Llama base in headless Chromium matches the same run in Deno",
  async (engine) => {
    const dir = await Deno.makeTempDir();
    const model = `${dir}/llama`;
    await writeTinyLlama(model);
    const inBrowser = { ...options(`${dir}/browser`, "comigs-1g1s", 1), model };
    const inDeno = { ...options(`${dir}/deno`, "comigs-1g1s", 1), model };
    const browser = await runInBrowser(inBrowser, {
      serve: false,
      port: 0,
      chromium: CHROMIUM,
      overwrite: false,
    }, { progress: quiet(), corpora: corpora() });
    const deno = await runTraining(engine, { options: inDeno }, {
      progress: quiet(),
      corpora: corpora(),
    });
    const tokens = (s: typeof deno.summary) => s.clients.map((c) => [c.name, c.train_tokens]);
    assertEquals(tokens(browser.summary), tokens(deno.summary));
    await closeRecords(inBrowser.out, inDeno.out);
    for (const id of [0, 1]) {
      const path = (out: string) => `${out}/clients/${id}/adapters.safetensors`;
      await closeAdapters(path(inBrowser.out), path(inDeno.out), model);
      const names = [...(await readSafetensors(path(inBrowser.out))).tensors.keys()];
      assert(names.every((n) => n.startsWith("model.layers.")), `not the Llama layout: ${names}`);
      assert(names.includes("model.layers.1.mlp.experts.1.down_proj.lora_B"), `${names}`);
    }
    await Deno.remove(dir, { recursive: true });
  },
);

/**
 * A tab joins a networked run (on the base `model` makes, or the shipped tiny GPT-2) beside a
 * Deno client; the run matches the same run simulated in this process.
 */
function joinTest(name: string, model?: (dir: string) => Promise<string>): void {
  gpuTest(name, async (engine) => {
    const dir = await Deno.makeTempDir();
    const base = model ? { model: await model(dir) } : {};
    const simulated = { ...options(`${dir}/sim`, "comigs-1g1s", 2), ...base };
    await runTraining(engine, { options: simulated }, { progress: quiet(), corpora: corpora() });
    const clients: Promise<unknown>[] = [];
    await serveRun({ options: { ...options(`${dir}/net`, "comigs-1g1s", 2), ...base } }, {
      progress: quiet(),
      hostname: "127.0.0.1",
      port: 0,
      listening: (server) =>
        clients.push(
          joinInBrowser({ server, client: 0, out: `${dir}/tab` }, {
            serve: false,
            port: 0,
            chromium: CHROMIUM,
            overwrite: false,
          }, { progress: quiet(), corpora: corpora() }),
          joinRun(engine, { server, client: 1, out: `${dir}/deno` }, {
            progress: quiet(),
            corpora: corpora(),
          }),
        ),
    });
    await Promise.all(clients);
    await closeRecords(`${dir}/net`, simulated.out);
    for (const [id, folder] of [[0, "tab"], [1, "deno"]] as const) {
      await closeAdapters(
        `${dir}/${folder}/adapters.safetensors`,
        `${simulated.out}/clients/${id}/adapters.safetensors`,
        base.model,
      );
    }
    await Deno.remove(dir, { recursive: true });
  });
}

joinTest("a tab joins a networked run beside a Deno client; the run matches the simulated one");
joinTest(
  "a tab joins a networked run on a Llama base beside a Deno client; it matches the simulated one",
  async (dir) => {
    await writeTinyLlama(`${dir}/llama`);
    return `${dir}/llama`;
  },
);

Deno.test("browser flags: train's without --resume, or --join's; --serve excludes --chromium", () => {
  const parsed = parseInvocation(["--rounds", "3", "--port", "8123"]);
  assertEquals("options" in parsed && parsed.options.rounds, 3);
  assertEquals("browser" in parsed && parsed.browser, {
    serve: false,
    port: 8123,
    chromium: CHROMIUM,
    overwrite: false,
  });
  assertThrows(() => parseInvocation(["--resume", "runs/x"]), UsageError, "--resume");
  assertThrows(() => parseInvocation(["--serve", "--chromium", "/x"]), UsageError, "--serve");
  assertThrows(() => parseInvocation(["--port", "70000"]), UsageError, "--port");
  assertThrows(() => parseInvocation(["--method", "nope"]), UsageError, "comigs-1g1s");
  const joined = parseInvocation(["--join", "http://h:8700", "--client", "1", "--out", "c1"]);
  assertEquals("join" in joined && joined.join, {
    server: "http://h:8700",
    client: 1,
    out: "c1",
    model: undefined,
  });
  assertThrows(
    () =>
      parseInvocation(["--join", "http://h:8700", "--client", "1", "--out", "c", "--rounds", "3"]),
    UsageError,
    "--join takes the run's options from the server; remove --rounds",
  );
  assertThrows(
    () => parseInvocation(["--join", "h:8700", "--client", "1", "--out", "c"]),
    UsageError,
    "--join must be an http(s):// address",
  );
  assertThrows(
    () => parseInvocation(["--client", "1"]),
    UsageError,
    "--client is a client id of --join",
  );
});

Deno.test("a missing Chromium is a clear error before anything is written", async () => {
  const dir = await Deno.makeTempDir();
  const missing = `${dir}/no-chromium`;
  await assertRejects(
    () =>
      runInBrowser(options(`${dir}/run`, "comigs-1g1s"), {
        serve: false,
        port: 0,
        chromium: missing,
      }, { progress: quiet(), corpora: corpora() }),
    UsageError,
    `no Chromium at ${missing}`,
  );
  assertEquals(await Deno.stat(`${dir}/run`).then(() => true, () => false), false);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("--serve: one tab claims the run; a second gets 409; a tab's error ends the run", async () => {
  const dir = await Deno.makeTempDir();
  let printed = "";
  const progress = new ProgressBar(0, 0, false, (text) => printed += text);
  // Its rejection is taken at once (it comes while the test still awaits a fetch).
  const failure = runInBrowser(
    options(`${dir}/run`, "comigs-1g1s"),
    { serve: true, port: 0, chromium: "unused" },
    { progress, corpora: corpora() },
  ).then(() => undefined, (e: Error) => e);
  let url: string | undefined;
  while (!url) {
    await new Promise((r) => setTimeout(r, 50));
    url = /open (http:\/\/127\.0\.0\.1:\d+\/)/.exec(printed)?.[1];
  }
  const first = await fetch(`${url}run.json`);
  assertEquals((await first.json()).categories, ["numbers", "words"]);
  const second = await fetch(`${url}run.json`);
  assertEquals(second.status, 409);
  assertEquals(await second.text(), "this run is already open in another tab");
  const event = { kind: "error", message: "WebGPU went away", stack: "" };
  await (await fetch(`${url}event`, { method: "POST", body: JSON.stringify(event) })).text();
  assertEquals((await failure)?.message.split("\n")[0], "in the browser: WebGPU went away");
  await Deno.remove(dir, { recursive: true });
});
