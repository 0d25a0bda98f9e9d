// The kernel variant: chosen per engine, explicitly, else by COMIGS_VARIANT, else by the adapter;
// and the variant ops use is the one chosen.
import assert from "node:assert/strict";
import { Engine } from "../../engine/device.ts";
import { Tape } from "../../engine/tape.ts";
import { matmul } from "../../kernels/matmul.ts";
import {
  chooseKernelVariant,
  type KernelVariant,
  kernelVariant,
  parseKernelVariant,
} from "../../kernels/variant.ts";

/** `fn` with COMIGS_VARIANT set to `value` (or unset), restored afterwards. */
function withEnv<T>(value: string | undefined, fn: () => T): T {
  const saved = Deno.env.get("COMIGS_VARIANT");
  if (value === undefined) Deno.env.delete("COMIGS_VARIANT");
  else Deno.env.set("COMIGS_VARIANT", value);
  try {
    return fn();
  } finally {
    if (saved === undefined) Deno.env.delete("COMIGS_VARIANT");
    else Deno.env.set("COMIGS_VARIANT", saved);
  }
}

/** The variant `engine` resolves with COMIGS_VARIANT = `env`, after forgetting earlier ones. */
function resolved(engine: Engine, env: string | undefined): KernelVariant {
  chooseKernelVariant(engine, "auto");
  return withEnv(env, () => kernelVariant(engine));
}

/**
 * A test on an engine of its own: the choices are kept per engine, and the engine the other
 * tests share must keep the default.
 */
function ownEngineTest(name: string, fn: (engine: Engine) => void): void {
  Deno.test({
    name,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const engine = await Engine.create();
      try {
        fn(engine);
      } finally {
        await engine.close();
      }
    },
  });
}

ownEngineTest(
  "the kernel variant follows the choice, then COMIGS_VARIANT, then the adapter",
  (engine) => {
    const adapters = engine.isFallbackAdapter ? "texture" : "storage";
    assert.equal(resolved(engine, undefined), adapters);
    assert.equal(resolved(engine, ""), adapters);
    assert.equal(resolved(engine, "auto"), adapters);
    assert.equal(resolved(engine, "storage"), "storage");
    assert.equal(resolved(engine, "texture"), "texture");
    // Decided once: a later change of the environment does not split an engine's kernels.
    withEnv("storage", () => assert.equal(kernelVariant(engine), "texture"));
    // An explicit choice wins over the environment.
    withEnv("texture", () => {
      chooseKernelVariant(engine, "storage");
      assert.equal(kernelVariant(engine), "storage");
    });
    assert.throws(
      () => resolved(engine, "simd"),
      /COMIGS_VARIANT: unknown kernel variant "simd"; use texture, storage or auto/,
    );
    assert.throws(
      () => parseKernelVariant("fast", "--variant"),
      /--variant: unknown kernel variant "fast"/,
    );
    assert.throws(
      () => chooseKernelVariant(engine, "fast" as KernelVariant),
      /unknown kernel variant "fast"/,
    );
  },
);

ownEngineTest("ops without an explicit variant use the engine's", (engine) => {
  for (const variant of ["texture", "storage"] as const) {
    chooseKernelVariant(engine, variant);
    const tape = new Tape(engine);
    const a = engine.tensor([8, 8]), b = engine.tensor([8, 8]);
    matmul(tape, a, b);
    // Each kernel family labels its product's dispatches with its name.
    const labels = tape.forward().map((c) => c.label);
    const other = variant === "texture" ? "storage" : "texture";
    assert.ok(labels.includes(`matmul (${variant})`), labels.join(", "));
    assert.ok(!labels.some((label) => label.endsWith(`(${other})`)), labels.join(", "));
    tape.dispose();
    a.dispose();
    b.dispose();
  }
});
