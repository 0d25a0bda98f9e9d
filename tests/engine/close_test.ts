// Closing: the engine a process ends with. Its own module, because closeAll closes every engine
// of the module's realm, the shared test engine included.
import assert from "node:assert/strict";
import { Engine } from "../../engine/device.ts";
import { DeviceLostError } from "../../engine/errors.ts";
import { copy } from "../../kernels/fill.ts";

Deno.test({
  name: "a closed engine refuses runs and reads; closeAll closes every engine still open",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const [a, b] = [await Engine.create(), await Engine.create()];
    const t = a.tensor([4], { data: [1, 2, 3, 4] });
    await a.run([copy(t, a.tensor([4]))]);
    await a.close();
    await a.close(); // a second close does nothing
    await assert.rejects(
      a.run([copy(t, t)]),
      /WebGPU device lost \(destroyed\): the engine was closed/,
    );
    await assert.rejects(a.readF32(t), DeviceLostError);
    const u = b.tensor([1], { data: [5] });
    await Engine.closeAll();
    await assert.rejects(b.readF32(u), /the engine was closed/);
  },
});
