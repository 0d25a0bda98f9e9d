// `--model hf:ORG/NAME[@REVISION]` wherever a base model is named: downloaded from a Hub (a real
// HTTP server answering as huggingface.co does, tests/model/local_hub.ts) into a cache, giving
// what the same files in a folder give; a run records the reference pinned to its commit, which
// then loads from the cache without a request; a model that cannot be had is the flag's error.
import { prepareRun } from "../../fed/run.ts";
import { assert, assertEquals, assertSameFile } from "../assert.ts";
import { corpora, options } from "../fed/tiny_run.ts";
import { LocalHub } from "../model/local_hub.ts";
import { tinyLlamaFiles, writeTinyLlama } from "../model/tiny_llama.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const COMMIT = "c".repeat(40);

async function withHub(
  fn: (hub: LocalHub, env: Record<string, string>, dir: string) => Promise<void>,
): Promise<void> {
  const hub = new LocalHub();
  const dir = await Deno.makeTempDir();
  hub.addRepo("org/tiny", {
    refs: new Map([["main", COMMIT]]),
    commits: new Map([[COMMIT, tinyLlamaFiles()]]),
    lfs: new Set(["model.safetensors"]),
  });
  try {
    await fn(hub, { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: `${dir}/cache`, HF_TOKEN: "" }, dir);
  } finally {
    await hub.close();
    await Deno.remove(dir, { recursive: true });
  }
}

async function task(cli: string, args: string[], env: Record<string, string>) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}cli/${cli}.ts`, ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code, stdout: text(stdout), stderr: text(stderr) };
}

Deno.test({
  name: "grad --model hf:ORG/NAME downloads once and gives the folder's bits; pinned, no request",
  sanitizeResources: false,
  fn: () =>
    withHub(async (hub, env, dir) => {
      await writeTinyLlama(`${dir}/folder`);
      await Deno.writeTextFile(`${dir}/tokens.json`, JSON.stringify([[5, 900, 17, 3, 1002, 40]]));
      const grad = (model: string, out: string, extra: Record<string, string> = {}) =>
        task("grad", [
          "--model",
          model,
          "--tokens",
          `${dir}/tokens.json`,
          "--out",
          `${dir}/${out}`,
        ], { ...env, ...extra });

      const fromHub = await grad("hf:org/tiny", "hub.safetensors");
      assertEquals(fromHub.code, 0, fromHub.stderr);
      assert(fromHub.stdout.includes("hf:org/tiny: model.safetensors"), fromHub.stdout);
      const fromFolder = await grad(`${dir}/folder`, "folder.safetensors");
      assertEquals(fromFolder.code, 0, fromFolder.stderr);
      await assertSameFile(`${dir}/hub.safetensors`, `${dir}/folder.safetensors`);

      const requests = hub.log.length;
      const pinned = await grad(`hf:org/tiny@${COMMIT}`, "pinned.safetensors");
      assertEquals(pinned.code, 0, pinned.stderr);
      assertEquals(hub.log.length, requests, "a cached commit needs no request");
      await assertSameFile(`${dir}/pinned.safetensors`, `${dir}/folder.safetensors`);
    }),
});

Deno.test({
  name: "a run records its Hub base model pinned to the commit the revision named",
  sanitizeResources: false,
  fn: () =>
    withHub(async (_hub, env, dir) => {
      const saved = Object.fromEntries(Object.keys(env).map((k) => [k, Deno.env.get(k)]));
      for (const [k, v] of Object.entries(env)) Deno.env.set(k, v);
      try {
        const lines: string[] = [];
        const { plan, inputs } = await prepareRun(
          { options: { ...options(`${dir}/run`, "comigs-1g1s"), model: "hf:org/tiny" } },
          { corpora: corpora(), progress: { log: (line) => lines.push(line) } },
        );
        assertEquals(plan.options.model, `hf:org/tiny@${COMMIT}`);
        assertEquals(inputs.config.vocab_size, 1003);
        assert(lines.some((l) => l.includes("model.safetensors")), lines.join("\n"));
      } finally {
        for (const [k, v] of Object.entries(saved)) {
          if (v === undefined) Deno.env.delete(k);
          else Deno.env.set(k, v);
        }
      }
    }),
});

Deno.test({
  name: "train --model hf:… that cannot be downloaded is --model's error, before any file",
  sanitizeResources: false,
  fn: () =>
    withHub(async (_hub, env, dir) => {
      const { code, stderr } = await task("train", [
        "--model",
        "hf:org/absent",
        "--out",
        `${dir}/run`,
      ], env);
      assertEquals(code, 2, stderr);
      assert(stderr.includes("--model cannot be downloaded: hf:org/absent@main"), stderr);
      assert(!stderr.includes("    at "), stderr);
      assertEquals(await Deno.stat(`${dir}/run`).catch(() => null), null);
    }),
});
