// `deno task grad` end to end: the debug-state file it writes for the golden model matches the
// golden file, and bad inputs end in one clear message (exit code 2), not a stack trace.
import { assert, assertEquals } from "../assert.ts";
import { readSafetensors } from "../../model/safetensors.ts";
import { assertClose } from "../util.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const GOLDEN = `${ROOT}tests/golden/gpt2-tiny`;
/** Golden debug states with adapters (scripts/golden_comigs.py): same base and tokens. */
const ADAPTED = `${ROOT}tests/golden/comigs-tiny`;

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

// k2: experts 2,3 with k = 2, rsLoRA, λ and ρ given; k1: experts 3,1 (a block without router),
// k = 1, standard scaling, λ and ρ left to their defaults. Every expert is used and no top-k
// choice is within 1e-3 of a tie, so f32 rounding cannot change a routing decision.
for (const name of ["k2", "k1"]) {
  Deno.test({
    name: `grad --adapters (${name}) matches PyTorch's debug state of the adapted model`,
    sanitizeResources: false,
    fn: async () => {
      const dir = await Deno.makeTempDir();
      const out = `${dir}/debug.safetensors`;
      const { code, stderr } = await grad([
        "--model",
        ADAPTED,
        "--adapters",
        `${ADAPTED}/adapters-${name}.safetensors`,
        "--tokens",
        `${ADAPTED}/tokens.json`,
        "--out",
        out,
      ]);
      assertEquals(code, 0, stderr);
      const ours = await readSafetensors(out);
      const ref = await readSafetensors(`${ADAPTED}/debug-${name}.safetensors`);
      assertEquals([...ours.tensors.keys()].sort(), [...ref.tensors.keys()].sort());
      for (const [tensorName, tensor] of ours.tensors) {
        const golden = ref.tensors.get(tensorName)!;
        assertEquals(tensor.shape, golden.shape, tensorName);
        // f32 sums over ≤ 39 tokens × 144 features of terms up to ~0.2 (the largest adapter
        // gradient is 0.16, 5–15× the base model's): 1e-6 absolute + 1e-4 relative; measured
        // errors are ≤ 1.7e-7. Values (loss, LB, logits): 1e-5, as for the base model.
        const tol = tensorName.startsWith("grad.")
          ? { atol: 1e-6, rtol: 1e-4 }
          : { atol: 1e-5, rtol: 1e-5 };
        assertClose(tensor.data, golden.data, tol, tensorName);
      }
      await Deno.remove(dir, { recursive: true });
    },
  });
}

// The Llama family with CoMiGS adapters (scripts/golden_llama.py): llama-gqa experts 2,3 with
// k = 2 on every attention projection; llama-mha experts 3,4, rank 2, LoRA on k_proj and o_proj
// only (lora_targets), λ and ρ set; qwen2-mqa experts 3,1 (a block without router) with k = 1,
// standard scaling, LoRA on q_proj and v_proj.
for (
  const [model, name] of [["llama-gqa-tiny", "k2"], ["llama-mha-tiny", "k2"], [
    "qwen2-mqa-tiny",
    "k1",
  ]]
) {
  Deno.test({
    name: `grad --adapters on ${model} (${name}) matches PyTorch's debug state`,
    sanitizeResources: false,
    fn: async () => {
      const dir = await Deno.makeTempDir();
      const golden = `${ROOT}tests/golden/${model}`;
      const out = `${dir}/debug.safetensors`;
      const { code, stderr } = await grad([
        "--model",
        golden,
        "--adapters",
        `${golden}/adapters-${name}.safetensors`,
        "--tokens",
        `${golden}/tokens.json`,
        "--out",
        out,
      ]);
      assertEquals(code, 0, stderr);
      const ours = await readSafetensors(out);
      const ref = await readSafetensors(`${golden}/debug-${name}.safetensors`);
      assertEquals([...ours.tensors.keys()].sort(), [...ref.tensors.keys()].sort());
      for (const [tensorName, tensor] of ours.tensors) {
        const expected = ref.tensors.get(tensorName)!;
        assertEquals(tensor.shape, expected.shape, tensorName);
        // GPT-2's adapted tolerances above, for the same reasons (sums of comparable length).
        const tol = tensorName.startsWith("grad.")
          ? { atol: 1e-6, rtol: 1e-4 }
          : { atol: 1e-5, rtol: 1e-5 };
        assertClose(tensor.data, expected.data, tol, tensorName);
      }
      await Deno.remove(dir, { recursive: true });
    },
  });
}

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
      "T=25 > the model's context 24",
    ],
    [["--model", `${dir}/none`, "--tokens", `${GOLDEN}/tokens.json`, "--out", "o"], "cannot read"],
    [
      [
        "--model",
        GOLDEN,
        "--adapters",
        `${dir}/none`,
        "--tokens",
        `${GOLDEN}/tokens.json`,
        "--out",
        "o",
      ],
      "cannot read",
    ],
    [
      // The gpt2-tiny debug state is a safetensors file without adapter metadata.
      [
        "--model",
        GOLDEN,
        "--adapters",
        `${GOLDEN}/debug.safetensors`,
        "--tokens",
        `${GOLDEN}/tokens.json`,
        "--out",
        "o",
      ],
      `lacks "lora_scaling"`,
    ],
  ];
  for (const [args, message] of cases) {
    const { code, stderr } = await grad(args);
    assert(code !== 0, `${args.join(" ")} should fail`);
    assert(stderr.includes(message), `"${message}" not in: ${stderr}`);
    assert(!stderr.includes("    at "), `stack trace printed for ${args.join(" ")}: ${stderr}`);
  }
  await Deno.remove(dir, { recursive: true });
});
