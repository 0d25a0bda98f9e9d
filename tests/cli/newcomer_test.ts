// What a newcomer meets (issue 18): every flag mistake is caught before anything is created
// (exit code 2, one line naming the flag, no run folder left behind), and a real run says where
// its folder is at the start and the end and shows how far every evaluation has come.
import { assert, assertEquals } from "../assert.ts";
import { ProgressBar } from "../../cli/progress.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

async function cli(tool: string, args: string[]) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}cli/${tool}.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code, stdout: text.decode(stdout), stderr: text.decode(stderr) };
}

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

Deno.test({
  name: "train: a flag mistake is one line naming the flag, exit 2, and nothing on disk",
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const emptyModel = `${dir}/empty-model`;
    await Deno.mkdir(emptyModel);
    const finished = `${dir}/finished`;
    await Deno.mkdir(finished);
    await Deno.writeTextFile(`${finished}/config.json`, "{}");
    await Deno.writeTextFile(`${finished}/summary.json`, "{}");
    const file = `${dir}/a-file`;
    await Deno.writeTextFile(file, "not a folder");
    const fresh = `${dir}/fresh`;
    const cases: [string[], string][] = [
      [["--seq", "100000"], "--seq 100000 exceeds the context of the base model (--model "],
      [["--model", emptyModel], `--model is not a base model: ${emptyModel}/config.json`],
      [["--lr", "-1"], "--lr must be a number in (0, 10), got -1"],
      [["--top-k", "5"], "--top-k 5 exceeds the experts a client holds (at most 2)"],
      [["--out", finished], `--out ${finished} holds a run already: continue it with --resume`],
      [["--out", file], `--out ${file} is a file; name a folder for the run`],
    ];
    for (const [args, message] of cases) {
      const out = args.includes("--out") ? [] : ["--out", fresh];
      const { code, stderr } = await cli("train", [...args, ...out]);
      assertEquals(code, 2, `${args.join(" ")}: ${stderr}`);
      // One line, and the GPU never started.
      const lines = stderr.trim().split("\n");
      assertEquals(lines.length, 1, stderr);
      assert(lines[0].startsWith("error: ") && lines[0].includes(message), stderr);
      assert(!await exists(fresh), `${args.join(" ")} left ${fresh} behind`);
    }
    // The refused folders are as they were.
    assertEquals(await Deno.readTextFile(`${finished}/config.json`), "{}");
    assertEquals(await Deno.readTextFile(file), "not a folder");
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "generate: a negative number reaches the range check",
  sanitizeResources: false,
  fn: async () => {
    const { code, stderr } = await cli("generate", [
      "--model",
      `${ROOT}models/base`,
      "--prompt",
      "x",
      "--temperature",
      "-1",
    ]);
    assertEquals(code, 2, stderr);
    assert(stderr.includes("--temperature must be a number ≥ 0 (0 = greedy), got -1"), stderr);
  },
});

Deno.test("progress: an evaluation has its own line; the ETA is the job's own when it gives one", () => {
  const lines: string[] = [];
  const bar = new ProgressBar(10, 0, false, (text) => lines.push(text));
  bar.evaluation({
    context: "round 0: client 1 (learned) test",
    done: 26,
    total: 26,
    tokensPerSecond: 6999.6,
  });
  assertEquals(lines, ["evaluating round 0: client 1 (learned) test  26/26 windows  7000 tok/s\n"]);
  bar.update({ step: 5, tokensPerSecond: 100, etaSeconds: 125 });
  assertEquals(lines[1], "step 5/10  100 tok/s  ETA 2m05s\n");
});

Deno.test({
  name: "train: a real run prints its folder at the start and the end and shows its evaluations",
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const out = `${dir}/run`;
    const { code, stdout, stderr } = await cli("train", [
      "--clients",
      "1",
      "--rounds",
      "1",
      "--local-steps",
      "1",
      "--out",
      out,
    ]);
    assertEquals(code, 0, stderr);
    const lines = stderr.split("\n");
    const folder = lines.findIndex((l) => l === `run folder: ${out}`);
    const firstStep = lines.findIndex((l) => l.includes("step 1/1"));
    assert(folder >= 0 && folder < firstStep, stderr);
    assert(stdout.trimEnd().split("\n").at(-1)!.startsWith(`run folder: ${out} `), stdout);
    for (const what of ["base model: client 0 (press) test", "round 0: client 0 (press) test"]) {
      assert(
        lines.some((l) =>
          new RegExp(
            `^evaluating ${what.replace(/[()]/g, "\\$&")}  (\\d+)/\\1 windows  \\d+ tok/s$`,
          ).test(l)
        ),
        `no finished evaluation of ${what} in:\n${stderr}`,
      );
    }
    await Deno.remove(dir, { recursive: true });
  },
});
