// A CLI that fails while the GPU is busy ends with its own exit code and message, every time.
// Without Engine.close on runMain's way out, lavapipe's queue thread compiles and runs on while
// exit() tears LLVM down: measured 4 of 20 such processes aborted (134 "double free or
// corruption", 139) on this machine, so 24 clean exits in a row would happen by chance < 1% of
// the time on the broken version.
import { assertEquals } from "../assert.ts";

const SCRIPT = new URL("./exit_run.ts", import.meta.url).pathname;

Deno.test("a CLI failing with GPU work in flight exits 1 with its message, 24 times in 24", async () => {
  for (let i = 0; i < 24; i++) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", SCRIPT],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(
      { code: out.code, signal: out.signal, stderr: stderr.trim() },
      { code: 1, signal: null, stderr: "error: failed with the GPU busy" },
      `process ${i + 1}`,
    );
  }
});
