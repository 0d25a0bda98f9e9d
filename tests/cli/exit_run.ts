// A CLI main (through runMain, as every `deno task` is) that gives the GPU work which takes a while
// — twenty new kernels, each compiled by lavapipe on its first dispatch (the constants hold the
// process id, so Mesa's shader cache never has them) — and fails as soon as it is submitted, or
// with `--ok` returns as soon as it is submitted.
import { runMain } from "../../cli/args.ts";
import { Engine } from "../../engine/device.ts";

await runMain(async () => {
  const engine = await Engine.create();
  const n = 1 << 16;
  const y = engine.tensor([n], { label: "y" });
  const commands = [];
  for (let i = 0; i < 20; i++) {
    const kernel = engine.kernel(
      `busy ${i}`,
      `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  var s = y[g.x];
  for (var j = 0u; j < 200u; j++) { s = sin(s * ${i + 1}.5) + ${Deno.pid}.0; }
  y[g.x] = s;
}`,
      ["rw"],
    );
    commands.push(engine.dispatch(`busy ${i}`, kernel, [y.buffer], n / 64));
  }
  await engine.run(commands, "busy work");
  if (!Deno.args.includes("--ok")) throw new Error("failed with the GPU busy");
});
