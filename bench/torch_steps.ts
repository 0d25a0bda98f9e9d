// The PyTorch side of the benches that compare a training step with PyTorch on the CPU
// (gpt2_vs_torch.ts, smollm2_size.ts): one run of a step script, and what it prints.

/** The JSON line a PyTorch step script prints last. */
export interface TorchResult {
  losses: number[];
  objectives: number[];
  step_s: number[];
  peak_rss_bytes: number;
  threads: number;
  torch: string;
}

/**
 * Runs `python` on `args` (the script first) and returns its last line; `program` names the bench
 * in errors, `hint` says what else the user may do when `python` cannot run at all.
 */
export async function runTorchSteps(
  program: string,
  python: string,
  args: string[],
  hint = "",
): Promise<TorchResult> {
  let output: Deno.CommandOutput;
  try {
    // PASSIVE: OpenMP's idle threads sleep instead of spinning between operations (the way
    // PyTorch's CPU figures in platform.md were taken).
    output = await new Deno.Command(python, {
      args,
      env: { OMP_WAIT_POLICY: "PASSIVE" },
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new Error(
      `${program}: cannot run ${python} (${(e as Error).message}); give --python the Python ` +
        `that has torch (Debian's python3-torch: /usr/bin/python3)${hint}`,
    );
  }
  if (!output.success) {
    throw new Error(
      `${program}: ${python} ${args.join(" ")} failed:\n` +
        new TextDecoder().decode(output.stderr),
    );
  }
  const text = new TextDecoder().decode(output.stdout).trim();
  return JSON.parse(text.split("\n").pop()!) as TorchResult;
}
