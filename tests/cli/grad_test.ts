// `deno task grad` end to end: the debug-state file it writes for the golden model matches the
// golden file, and bad inputs end in one clear message (exit code 2), not a stack trace.
import { assert, assertEquals } from "../assert.ts";
import { readSafetensors } from "../../model/safetensors.ts";
import { assertClose } from "../util.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const GOLDEN = `${ROOT}tests/golden/gpt2-tiny`;

async function grad(args: string[]) {
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}cli/grad.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, stderr: new TextDecoder().decode(stderr) };
}

Deno.test({
  name: "grad writes the interfaces.md debug state, matching PyTorch's",
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const out = `${dir}/debug.safetensors`;
    const { code, stderr } = await grad([
      "--model",
      GOLDEN,
      "--tokens",
      `${GOLDEN}/tokens.json`,
      "--out",
      out,
    ]);
    assertEquals(code, 0, stderr);
    const ours = await readSafetensors(out);
    const ref = await readSafetensors(`${GOLDEN}/debug.safetensors`);
    for (const [name, tensor] of ours.tensors) {
      const golden = ref.tensors.get(name);
      assert(golden, `${name} is not in the golden file`);
      assertEquals(tensor.shape, golden.shape, name);
      // The same tolerances as tests/model/gpt2_golden_test.ts, which explains them.
      const tol = name.startsWith("grad.")
        ? { atol: 2e-7, rtol: 1e-4 }
        : { atol: 1e-5, rtol: 1e-5 };
      assertClose(tensor.data, golden.data, tol, name);
    }
    const expected = [...ref.tensors.keys()].filter((n) => n !== "train_losses");
    assertEquals([...ours.tensors.keys()].sort(), expected.sort());
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("grad rejects bad inputs with one clear message", async () => {
  const dir = await Deno.makeTempDir();
  const tokens = (json: unknown) => {
    const path = `${dir}/t${Math.random()}.json`;
    Deno.writeTextFileSync(path, JSON.stringify(json));
    return path;
  };
  const cases: [string[], string][] = [
    [["--model", GOLDEN, "--out", `${dir}/o`], "--tokens is required"],
    [["--bogus"], "Unknown option '--bogus'"],
    [["--model", GOLDEN, "--tokens", tokens([[1, 2], [3]]), "--out", "o"], "sequence 1 does not"],
    [["--model", GOLDEN, "--tokens", tokens([[1, 101]]), "--out", "o"], "101 is not a token id"],
    [["--model", GOLDEN, "--tokens", tokens([[1.5, 2]]), "--out", "o"], "1.5 is not a token id"],
    [["--model", GOLDEN, "--tokens", tokens([[1]]), "--out", "o"], "at least 2 token ids"],
    [["--model", GOLDEN, "--tokens", tokens({}), "--out", "o"], "non-empty JSON array"],
    [
      ["--model", GOLDEN, "--tokens", tokens([Array(26).fill(0)]), "--out", "o"],
      "T=25 > n_positions 24",
    ],
    [["--model", `${dir}/none`, "--tokens", `${GOLDEN}/tokens.json`, "--out", "o"], "cannot read"],
  ];
  for (const [args, message] of cases) {
    const { code, stderr } = await grad(args);
    assert(code !== 0, `${args.join(" ")} should fail`);
    assert(stderr.includes(message), `"${message}" not in: ${stderr}`);
    assert(!stderr.includes("    at "), `stack trace printed for ${args.join(" ")}: ${stderr}`);
  }
  await Deno.remove(dir, { recursive: true });
});
