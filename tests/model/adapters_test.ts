// Adapter files (interfaces.md): a save → load round trip keeps names, shapes, values and
// metadata; malformed files are refused naming every problem; fresh adapters follow method.md's
// init (lora_B = 0, lora_A within ±1/√in, router N(0, 0.02²)) deterministically from the seed.
import {
  type AdapterConfig,
  adapterMetadata,
  adapterShapes,
  initAdapters,
  loadAdapters,
  loraScale,
  saveAdapters,
} from "../../model/adapters.ts";
import type { GPT2Config } from "../../model/config.ts";
import { type NamedTensor, writeSafetensors } from "../../model/safetensors.ts";
import { assert, assertEquals, assertRejects } from "../assert.ts";

const BASE: GPT2Config = {
  n_layer: 3,
  n_head: 2,
  n_embd: 8,
  vocab_size: 50,
  n_positions: 16,
  layer_norm_epsilon: 1e-5,
};
const CONFIG: AdapterConfig = {
  rank: 2,
  alpha: 4,
  scaling: "rslora",
  topK: 2,
  experts: [1, 3, 2],
  lbCoef: 0.01,
  lbRho: 0.3,
};

Deno.test("adapters: names and PEFT shapes per block; E = 1 has no router", () => {
  const shapes = adapterShapes(BASE, CONFIG);
  assertEquals(shapes.get("h.0.attn.c_attn.lora_B"), [24, 2]);
  assertEquals(shapes.get("h.1.mlp.experts.2.c_fc.lora_B"), [32, 2]);
  assertEquals(shapes.get("h.1.mlp.experts.2.c_proj.lora_A"), [2, 32]);
  assertEquals(shapes.get("h.1.mlp.router.weight"), [3, 8]);
  assert(!shapes.has("h.0.mlp.router.weight"));
  assertEquals(shapes.size, 3 * 4 + (1 + 3 + 2) * 4 + 2);
  assertEquals(loraScale(CONFIG), 4 / Math.SQRT2);
  assertEquals(loraScale({ ...CONFIG, scaling: "standard" }), 2);
});

Deno.test("adapters: init is deterministic and follows method.md", () => {
  const a = initAdapters(BASE, CONFIG, 5), b = initAdapters(BASE, CONFIG, 5);
  const c = initAdapters(BASE, CONFIG, 6);
  for (const [name, data] of a) {
    assertEquals([...data], [...b.get(name)!]);
    if (name.endsWith("lora_B")) assert(data.every((x) => x === 0), name);
    if (name.endsWith("lora_A")) {
      const bound = 1 / Math.sqrt(adapterShapes(BASE, CONFIG).get(name)![1]);
      assert(data.every((x) => Math.abs(x) <= bound) && data.some((x) => x !== 0), name);
    }
    if (name.endsWith("router.weight")) {
      assert(data.every((x) => Math.abs(x) < 0.02 * 6) && data.some((x) => x !== 0), name);
    }
  }
  assert(![...a].every(([name, d]) => d.every((x, i) => x === c.get(name)![i])));
});

Deno.test("adapters: save → load round trip; metadata are strings per interfaces.md", async () => {
  const dir = await Deno.makeTempDir();
  const values = initAdapters(BASE, CONFIG, 1);
  await saveAdapters(`${dir}/a.safetensors`, BASE, { config: CONFIG, values });
  const loaded = await loadAdapters(`${dir}/a.safetensors`, BASE);
  assertEquals(loaded.config, CONFIG);
  for (const [name, data] of values) assertEquals([...loaded.values.get(name)!], [...data]);
  assertEquals(adapterMetadata(CONFIG), {
    lora_rank: "2",
    lora_alpha: "4",
    lora_scaling: "rslora",
    top_k: "2",
    n_experts: "1,3,2",
    lb_coef: "0.01",
    lb_rho: "0.3",
  });
  assertEquals(adapterMetadata({ ...CONFIG, experts: [2, 2, 2] }).n_experts, "2");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("adapters: malformed files are refused, naming every problem", async () => {
  const dir = await Deno.makeTempDir();
  const values = initAdapters(BASE, CONFIG, 1);
  const shapes = adapterShapes(BASE, CONFIG);
  const write = async (
    edit: (t: Map<string, NamedTensor>) => void,
    metadata: Record<string, string> = adapterMetadata(CONFIG),
  ) => {
    const tensors = new Map(
      [...shapes].map(([name, shape]) => [name, { shape, data: values.get(name)! }]),
    );
    edit(tensors);
    const path = `${dir}/${crypto.randomUUID()}.safetensors`;
    await writeSafetensors(path, tensors, metadata);
    return path;
  };
  const cases: [string, string][] = [
    [await write((t) => t.delete("h.1.mlp.router.weight")), "missing h.1.mlp.router.weight [3,8]"],
    [
      await write((t) =>
        t.set("h.0.attn.c_attn.lora_A", { shape: [3, 8], data: new Float32Array(24) })
      ),
      "h.0.attn.c_attn.lora_A is [3,8], expected [2,8]",
    ],
    [
      await write((t) => t.set("h.9.extra", { shape: [1], data: new Float32Array(1) })),
      "unexpected tensor h.9.extra",
    ],
    [await write(() => {}, { ...adapterMetadata(CONFIG), n_experts: "1,3" }), "lists 2 layers"],
    [
      await write(() => {}, { ...adapterMetadata(CONFIG), n_experts: "0" }),
      "each count must be 1..16",
    ],
    [await write(() => {}, { ...adapterMetadata(CONFIG), lora_scaling: "dora" }), `"rslora" or`],
    [await write(() => {}, { ...adapterMetadata(CONFIG), top_k: "1.5" }), "must be an integer ≥ 1"],
    [await write(() => {}, { ...adapterMetadata(CONFIG), lb_rho: "1" }), "must be in (0, 1)"],
    [await write(() => {}, { lora_alpha: "4" }), `lacks "lora_scaling"`],
    [
      await write((t) =>
        t.set("h.0.attn.c_attn.lora_A", {
          shape: [2, 8],
          data: new Float32Array(16).fill(NaN),
        })
      ),
      "element 0 is NaN (not finite)",
    ],
  ];
  for (const [path, message] of cases) {
    await assertRejects(() => loadAdapters(path, BASE), Error, message);
  }
  await Deno.remove(dir, { recursive: true });
});
