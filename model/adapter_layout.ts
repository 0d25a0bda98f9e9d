// Where a client's adapters live, for each base family (interfaces.md "Adapters of one client"):
// the canonical names and shapes of the files and messages, and how the GPU holds them (per
// block: the attention layers' LoRA pairs, every expert's LoRA matrices stacked along a leading
// E so one mixture kernel binds all experts, and the router [E, hidden] when E > 1).
//
//   GPT-2  h.{i}.attn.{c_attn,c_proj}.lora_A|lora_B,
//          h.{i}.mlp.experts.{j}.{c_fc,c_proj}.lora_A|lora_B, h.{i}.mlp.router.weight
//   Llama  model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_A|lora_B (the adapted projections),
//          model.layers.{i}.mlp.experts.{j}.{gate,up,down}_proj.lora_A|lora_B,
//          model.layers.{i}.mlp.router.weight
import { type BaseConfig, dimsOf, isLlama } from "./base.ts";

/** The attention projections a Llama-family adapter may carry LoRA on (all by default). */
export const LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"] as const;
export type LoraTarget = typeof LORA_TARGETS[number];

/** One LoRA pair of an attention layer: A [r, in], B [out, r]. */
export interface AttentionSlot {
  /** The layer, e.g. "c_attn" or "q_proj". */
  layer: string;
  name: (leaf: "lora_A" | "lora_B") => string;
  inputs: number;
  outputs: number;
}

/** One of the experts' LoRA matrices, stacked [E, rows, cols]; `key` names it in the kernel. */
export interface ExpertSlot {
  key: string;
  /** The name of expert j's matrix. */
  name: (expert: number) => string;
  rows: number;
  cols: number;
}

export interface BlockLayout {
  attention: AttentionSlot[];
  experts: ExpertSlot[];
  /** E of this block. */
  count: number;
  router: string | null;
}

/** The layout of adapters with `experts[i]` experts in block i, rank `rank`. */
export function adapterLayout(
  base: BaseConfig,
  { rank: r, experts, targets }: { rank: number; experts: number[]; targets?: LoraTarget[] },
): BlockLayout[] {
  const C = dimsOf(base).hidden;
  return experts.map((E, i) => {
    const lora = (rowsA: number, colsB: number, name: (leaf: string) => string, key: string) => [
      {
        key: `${key}A`,
        name: (j: number) => name(`experts.${j}`) + ".lora_A",
        rows: r,
        cols: rowsA,
      },
      {
        key: `${key}B`,
        name: (j: number) => name(`experts.${j}`) + ".lora_B",
        rows: colsB,
        cols: r,
      },
    ];
    if (isLlama(base)) {
      const p = `model.layers.${i}`;
      const I = base.intermediate_size, D = base.head_dim;
      const q = base.num_attention_heads * D, kv = base.num_key_value_heads * D;
      const sizes: Record<LoraTarget, [number, number]> = {
        q_proj: [C, q],
        k_proj: [C, kv],
        v_proj: [C, kv],
        o_proj: [q, C],
      };
      return {
        attention: (targets ?? [...LORA_TARGETS]).map((t) => ({
          layer: t,
          name: (leaf) => `${p}.self_attn.${t}.${leaf}`,
          inputs: sizes[t][0],
          outputs: sizes[t][1],
        })),
        experts: [
          ...lora(C, I, (e) => `${p}.mlp.${e}.gate_proj`, "gate"),
          ...lora(C, I, (e) => `${p}.mlp.${e}.up_proj`, "up"),
          ...lora(I, C, (e) => `${p}.mlp.${e}.down_proj`, "down"),
        ],
        count: E,
        router: E > 1 ? `${p}.mlp.router.weight` : null,
      };
    }
    const h = `h.${i}`;
    return {
      attention: [
        { layer: "c_attn", name: (leaf) => `${h}.attn.c_attn.${leaf}`, inputs: C, outputs: 3 * C },
        { layer: "c_proj", name: (leaf) => `${h}.attn.c_proj.${leaf}`, inputs: C, outputs: C },
      ],
      experts: [
        ...lora(C, 4 * C, (e) => `${h}.mlp.${e}.c_fc`, "fc"),
        ...lora(4 * C, C, (e) => `${h}.mlp.${e}.c_proj`, "proj"),
      ],
      count: E,
      router: E > 1 ? `${h}.mlp.router.weight` : null,
    };
  });
}

/** Canonical adapter names → shapes, in file order (per block: attention, each expert, router). */
export function layoutShapes(layout: readonly BlockLayout[], rank: number, hidden: number) {
  const shapes = new Map<string, number[]>();
  for (const block of layout) {
    for (const a of block.attention) {
      shapes.set(a.name("lora_A"), [rank, a.inputs]);
      shapes.set(a.name("lora_B"), [a.outputs, rank]);
    }
    for (let j = 0; j < block.count; j++) {
      for (const e of block.experts) shapes.set(e.name(j), [e.rows, e.cols]);
    }
    if (block.router) shapes.set(block.router, [block.count, hidden]);
  }
  return shapes;
}

/** Whether `name` is a canonical adapter tensor name of either family (its block, expert and
 * layer not checked against any one layout). */
export function isAdapterName(name: string): boolean {
  return ADAPTER_NAME.test(name);
}

const GPT2_NAME =
  /h\.\d+\.(attn\.c_(attn|proj)\.lora_[AB]|mlp\.experts\.\d+\.c_(fc|proj)\.lora_[AB]|mlp\.router\.weight)/;
const LLAMA_NAME =
  /model\.layers\.\d+\.(self_attn\.[qkvo]_proj\.lora_[AB]|mlp\.experts\.\d+\.(gate|up|down)_proj\.lora_[AB]|mlp\.router\.weight)/;
const ADAPTER_NAME = new RegExp(`^(${GPT2_NAME.source}|${LLAMA_NAME.source})$`);

/** Whether a name belongs to the attention LoRA, the generalist (expert 0), a specialist, or a
 * router (any family). */
export function adapterRole(name: string): "attention" | "generalist" | "specialist" | "router" {
  if (/\.(attn|self_attn)\./.test(name)) return "attention";
  if (name.endsWith(".router.weight")) return "router";
  return /\.mlp\.experts\.0\./.test(name) ? "generalist" : "specialist";
}
