// `deno task compare --jobs 2`: two runs train at once (both start before either ends), each
// writes its output to DIR/<method>-s<seed>.log as it comes, and each ends with the bits it has
// when trained alone (every run is its own process). A tiny Llama base keeps the runs'
// evaluations of the topics test sets short (~1 min a run here).
import { assert, assertEquals, assertSameFile } from "../assert.ts";
import { fileExists } from "../../model/file_exists.ts";
import { writeTinyLlama } from "../model/tiny_llama.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

function spawnDeno(script: string, args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}${script}`, ...args],
    stdout: "null",
    stderr: "piped",
  }).spawn();
}

async function ended(child: Deno.ChildProcess): Promise<{ code: number; stderr: string }> {
  const { code, stderr } = await child.output();
  return { code, stderr: new TextDecoder().decode(stderr) };
}

function deno(script: string, args: string[]): Promise<{ code: number; stderr: string }> {
  return ended(spawnDeno(script, args));
}

Deno.test("--jobs 2: runs train at once into their logs, each with the bits it has alone", async () => {
  const dir = await Deno.makeTempDir();
  await writeTinyLlama(`${dir}/llama`);
  const shared = [
    ...["--scenario", "topics", "--rounds", "1", "--local-steps", "2"],
    ...["--batch", "8", "--seq", "64", "--model", `${dir}/llama`],
  ];
  const out = `${dir}/compare`;
  const running = deno("cli/compare.ts", [
    ...shared,
    ...["--methods", "local", "--seeds", "1", "--jobs", "2", "--out", out],
  ]);
  // The log shows a run's progress while it trains, not only once it has ended.
  const run = `${out}/local-s0`;
  let live = false;
  while (!live && !(await fileExists(`${run}/summary.json`))) {
    live = (await Deno.readTextFile(`${run}.log`).catch(() => "")).includes(`run folder: ${run}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const compare = await running;
  assertEquals(compare.code, 0, compare.stderr);
  assert(live, `${run}.log said nothing before the run ended`);
  const events = compare.stderr.split("\n").filter((line) => line.startsWith("compare: ["))
    .map((line) => line.replace(/^compare: \[\d\/2\] \S+ \((\S+), seed 0\): (\w+).*$/, "$2 $1"));
  assertEquals(events.slice(0, 2), ["training pretrained", "training local"], compare.stderr);
  assertEquals(events.slice(2).sort(), ["done local", "done pretrained"], compare.stderr);
  for (const run of ["pretrained-s0", "local-s0"]) {
    const log = await Deno.readTextFile(`${out}/${run}.log`);
    assert(log.includes(`run folder: ${out}/${run}`), `${run}.log:\n${log}`);
  }

  const alone = await deno("cli/train.ts", [
    ...shared,
    ...["--method", "local", "--seed", "0", "--out", `${dir}/alone`],
  ]);
  assertEquals(alone.code, 0, alone.stderr);
  for (
    const file of [
      "summary.json",
      ...[0, 1, 2, 3].map((c) => `clients/${c}/adapters.safetensors`),
    ]
  ) {
    await assertSameFile(`${out}/local-s0/${file}`, `${dir}/alone/${file}`);
  }
  assert((await Deno.readTextFile(`${out}/results.md`)).includes("| local |"));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("SIGTERM stops compare: the runs it stopped say so, and the same command resumes them", async () => {
  const dir = await Deno.makeTempDir();
  await writeTinyLlama(`${dir}/llama`);
  const out = `${dir}/compare`;
  const args = [
    ...["--scenario", "topics", "--rounds", "1", "--local-steps", "2", "--batch", "8"],
    ...["--seq", "64", "--model", `${dir}/llama`, "--methods", "local", "--seeds", "1"],
    ...["--jobs", "2", "--out", out],
  ];
  const compare = spawnDeno("cli/compare.ts", args);
  const run = `${out}/local-s0`;
  while (!(await Deno.readTextFile(`${run}.log`).catch(() => "")).includes(`run folder: ${run}`)) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  compare.kill("SIGTERM");
  const { code, stderr } = await ended(compare);
  assertEquals(code, 143, stderr);
  assert(!(await fileExists(`${run}/summary.json`)), "the stopped run wrote a summary");
  assert(stderr.includes(`${run} (local, seed 0): stopped in `), stderr);
  assert(!stderr.includes(`${run} (local, seed 0): done`), stderr);
  assert(stderr.includes("compare: stopped by SIGTERM; rerun the same command"), stderr);

  const again = await deno("cli/compare.ts", args);
  const resumed = again.stderr;
  assertEquals(again.code, 0, resumed);
  assert(resumed.includes(`${run} (local, seed 0): resuming`), resumed);
  assert(resumed.includes(`${run} (local, seed 0): done in `), resumed);
  assert(await fileExists(`${run}/summary.json`), resumed);
  await Deno.remove(dir, { recursive: true });
});
