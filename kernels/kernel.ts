// A kernel declared from one list of bindings (engine/bindings.ts): the list writes the WGSL
// `@binding` declarations in front of the kernel's code and gives the bind-group layout, so the
// two cannot disagree.
import { type Binding, bindingDeclarations, bindingKinds } from "../engine/bindings.ts";
import type { Engine } from "../engine/device.ts";
import type { Kernel } from "../engine/pipelines.ts";

/** The compiled-once kernel whose WGSL is `bindings`' declarations, then `code`. */
export function declareKernel(
  engine: Engine,
  label: string,
  bindings: readonly Binding[],
  code: string,
): Kernel {
  return engine.kernel(label, `${bindingDeclarations(bindings)}\n${code}`, bindingKinds(bindings));
}
