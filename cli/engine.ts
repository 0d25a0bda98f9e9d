// The engine a CLI computes on: the adapter and the kernel family it uses, said once on stderr
// (a bad COMIGS_VARIANT fails here, before any work).
import { Engine } from "../engine/device.ts";
import { kernelVariant } from "../kernels/variant.ts";

export async function startEngine(): Promise<Engine> {
  const engine = await Engine.create({ verbose: true });
  console.error(`kernels: ${kernelVariant(engine)}`);
  return engine;
}
