// The adapters of one client (method.md §1, interfaces.md "Adapters of one client"): attention
// LoRA on c_attn and c_proj of every block, E_i LoRA experts on every MLP (expert 0 is the
// generalist) and, when E_i > 1, a router. On the CPU they are a map from canonical names to
// f32 data (what files, messages and aggregation see); on the GPU each block's experts are
// stacked into one tensor per LoRA matrix, so the fused MoE kernel binds all experts at once.
import type { Engine } from "../engine/device.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { GPT2Config } from "./config.ts";
import { NormalSource } from "./init.ts";
import {
  CheckpointError,
  type NamedTensor,
  parseSafetensors,
  readCheckpointBytes,
  serializeSafetensors,
  writeFileAtomic,
} from "./safetensors.ts";

export type LoraScaling = "rslora" | "standard";

export interface AdapterConfig {
  rank: number;
  alpha: number;
  /** rslora: s = alpha/√r (the authors' code); standard: s = alpha/r. */
  scaling: LoraScaling;
  /** Experts each token is routed to (clipped to E per layer). */
  topK: number;
  /** E per block. */
  experts: number[];
  /** λ, the weight of the load-balancing loss (0: not computed). */
  lbCoef: number;
  /** ρ, the generalist's importance in the load-balancing loss. */
  lbRho: number;
}

import { MAX_EXPERTS } from "../kernels/topk_gate.ts";
/** The most experts a block may hold: the kernels' limit. */
export { MAX_EXPERTS };
/** Router init N(0, 0.02²), as the authors' code. */
const ROUTER_STD = 0.02;

export function loraScale(config: AdapterConfig): number {
  return config.scaling === "rslora"
    ? config.alpha / Math.sqrt(config.rank)
    : config.alpha / config.rank;
}

/** Canonical adapter names → shapes, in file order (expert 0 first in every block). */
export function adapterShapes(base: GPT2Config, config: AdapterConfig): Map<string, number[]> {
  const C = base.n_embd, H = 4 * C, r = config.rank;
  const shapes = new Map<string, number[]>();
  config.experts.forEach((E, i) => {
    const h = `h.${i}`;
    shapes.set(`${h}.attn.c_attn.lora_A`, [r, C]);
    shapes.set(`${h}.attn.c_attn.lora_B`, [3 * C, r]);
    shapes.set(`${h}.attn.c_proj.lora_A`, [r, C]);
    shapes.set(`${h}.attn.c_proj.lora_B`, [C, r]);
    for (let j = 0; j < E; j++) {
      const e = `${h}.mlp.experts.${j}`;
      shapes.set(`${e}.c_fc.lora_A`, [r, C]);
      shapes.set(`${e}.c_fc.lora_B`, [H, r]);
      shapes.set(`${e}.c_proj.lora_A`, [r, H]);
      shapes.set(`${e}.c_proj.lora_B`, [C, r]);
    }
    if (E > 1) shapes.set(`${h}.mlp.router.weight`, [E, C]);
  });
  return shapes;
}

/** Whether a name belongs to the attention LoRA, the generalist (expert 0), or the router. */
export function adapterRole(name: string): "attention" | "generalist" | "specialist" | "router" {
  if (name.includes(".attn.")) return "attention";
  if (name.endsWith(".router.weight")) return "router";
  return /\.mlp\.experts\.0\./.test(name) ? "generalist" : "specialist";
}

/**
 * Fresh adapters, deterministic from `seed`: lora_A ~ U(−1/√in, 1/√in) (PEFT's Kaiming-uniform
 * bound), lora_B = 0 (so the adapted model starts as the base), router N(0, 0.02²).
 */
export function initAdapters(
  base: GPT2Config,
  config: AdapterConfig,
  seed: number,
): Map<string, Float32Array> {
  const random = new NormalSource(seed);
  const values = new Map<string, Float32Array>();
  for (const [name, shape] of adapterShapes(base, config)) {
    const data = new Float32Array(shape[0] * shape[1]);
    if (name.endsWith("lora_A")) {
      const bound = 1 / Math.sqrt(shape[1]);
      for (let i = 0; i < data.length; i++) data[i] = (2 * random.uniform() - 1) * bound;
    } else if (name.endsWith("router.weight")) random.fill(data, ROUTER_STD);
    values.set(name, data);
  }
  return values;
}

export function adapterMetadata(config: AdapterConfig): Record<string, string> {
  const same = config.experts.every((E) => E === config.experts[0]);
  return {
    lora_rank: String(config.rank),
    lora_alpha: String(config.alpha),
    lora_scaling: config.scaling,
    top_k: String(config.topK),
    n_experts: same ? String(config.experts[0]) : config.experts.join(","),
    lb_coef: String(config.lbCoef),
    lb_rho: String(config.lbRho),
  };
}

/** Reads the metadata of an adapters file; every problem is named with the file. */
export function parseAdapterMetadata(
  metadata: Record<string, string>,
  base: GPT2Config,
  source: string,
): AdapterConfig {
  const fail = (message: string): never => {
    throw new CheckpointError(source, message);
  };
  const number = (key: string, fallback?: string): number => {
    const text = metadata[key] ?? fallback;
    if (text === undefined) fail(`__metadata__ lacks "${key}"`);
    const value = Number(text);
    if (!Number.isFinite(value) || String(text).trim() === "") {
      fail(`__metadata__ "${key}" = "${text}" is not a number`);
    }
    return value;
  };
  const integer = (key: string, min: number): number => {
    const value = number(key);
    if (!Number.isInteger(value) || value < min) {
      fail(`__metadata__ "${key}" = "${metadata[key]}" must be an integer ≥ ${min}`);
    }
    return value;
  };
  const scaling = metadata.lora_scaling ?? fail(`__metadata__ lacks "lora_scaling"`);
  if (scaling !== "rslora" && scaling !== "standard") {
    fail(`__metadata__ "lora_scaling" = "${scaling}" must be "rslora" or "standard"`);
  }
  const expertsText = metadata.n_experts ?? fail(`__metadata__ lacks "n_experts"`);
  const parts = expertsText.split(",").map((p) => p.trim());
  const experts = parts.map((p) => Number(p));
  if (experts.some((E) => !Number.isInteger(E) || E < 1 || E > MAX_EXPERTS)) {
    fail(`__metadata__ "n_experts" = "${expertsText}": each count must be 1..${MAX_EXPERTS}`);
  }
  if (experts.length !== 1 && experts.length !== base.n_layer) {
    fail(
      `__metadata__ "n_experts" = "${expertsText}" lists ${experts.length} layers; the model ` +
        `has ${base.n_layer} (give one count for all layers or one per layer)`,
    );
  }
  const config: AdapterConfig = {
    rank: integer("lora_rank", 1),
    alpha: number("lora_alpha"),
    scaling: scaling as LoraScaling,
    topK: integer("top_k", 1),
    experts: experts.length === 1 ? new Array(base.n_layer).fill(experts[0]) : experts,
    lbCoef: number("lb_coef", "0.01"),
    lbRho: number("lb_rho", "0.5"),
  };
  if (!(config.lbCoef >= 0)) fail(`__metadata__ "lb_coef" = ${config.lbCoef} must be ≥ 0`);
  if (!(config.lbRho > 0 && config.lbRho < 1)) {
    fail(`__metadata__ "lb_rho" = ${config.lbRho} must be in (0, 1)`);
  }
  return config;
}

export interface AdapterFile {
  config: AdapterConfig;
  values: Map<string, Float32Array>;
}

/** Loads and validates an adapters file against the base model it adapts. */
export async function loadAdapters(path: string, base: GPT2Config): Promise<AdapterFile> {
  return decodeAdapters(await readCheckpointBytes(path), base, path);
}

/** An adapters file's bytes (encodeAdapters), validated against the base model it adapts. */
export function decodeAdapters(
  bytes: Uint8Array,
  base: GPT2Config,
  path = "adapters",
): AdapterFile {
  const { tensors, metadata } = parseSafetensors(bytes, path);
  const config = parseAdapterMetadata(metadata, base, path);
  const expected = adapterShapes(base, config);
  const problems: string[] = [];
  for (const [name, shape] of expected) {
    const tensor = tensors.get(name);
    if (!tensor) problems.push(`missing ${name} [${shape}]`);
    else if (tensor.shape.join() !== shape.join()) {
      problems.push(`${name} is [${tensor.shape}], expected [${shape}]`);
    }
  }
  for (const name of tensors.keys()) {
    if (!expected.has(name)) problems.push(`unexpected tensor ${name}`);
  }
  if (problems.length) {
    throw new CheckpointError(
      path,
      `does not fit ${config.experts.join(",")} experts of rank ${config.rank} on this ` +
        `${base.n_layer}-layer, ${base.n_embd}-wide model: ${problems.join("; ")}`,
    );
  }
  const values = new Map<string, Float32Array>();
  for (const name of expected.keys()) values.set(name, tensors.get(name)!.data);
  return { config, values };
}

export async function saveAdapters(
  path: string,
  base: GPT2Config,
  file: AdapterFile,
): Promise<void> {
  await writeFileAtomic(path, encodeAdapters(base, file));
}

/** An adapter file's bytes (safetensors with the config in its metadata). */
export function encodeAdapters(
  base: GPT2Config,
  { config, values }: AdapterFile,
): Uint8Array<ArrayBuffer> {
  const tensors: [string, NamedTensor][] = [];
  for (const [name, shape] of adapterShapes(base, config)) {
    const data = values.get(name);
    if (!data) throw new Error(`encodeAdapters: ${name} missing`);
    tensors.push([name, { shape, data }]);
  }
  return serializeSafetensors(tensors, adapterMetadata(config));
}

/** One block's adapter tensors on the GPU. */
export interface BlockAdapterTensors {
  attnA: Tensor;
  attnB: Tensor;
  projA: Tensor;
  projB: Tensor;
  /** The experts' LoRA matrices stacked: [E, r, C], [E, H, r], [E, r, H], [E, C, r]. */
  experts: { fcA: Tensor; fcB: Tensor; projA: Tensor; projB: Tensor };
  /** [E, C]; absent when E = 1. */
  router?: Tensor;
}

const EXPERT_PARTS = [
  ["fcA", "c_fc.lora_A"],
  ["fcB", "c_fc.lora_B"],
  ["projA", "c_proj.lora_A"],
  ["projB", "c_proj.lora_B"],
] as const;

/** A client's adapters on the GPU, read and written through canonical names. */
export class AdapterTensors {
  readonly blocks: BlockAdapterTensors[];
  readonly shapes: Map<string, number[]>;

  constructor(
    readonly engine: Engine,
    readonly base: GPT2Config,
    readonly config: AdapterConfig,
    values: ReadonlyMap<string, Float32Array>,
  ) {
    this.shapes = adapterShapes(base, config);
    const C = base.n_embd, H = 4 * C, r = config.rank;
    this.blocks = config.experts.map((E, i) => {
      const h = `h.${i}`;
      const tensor = (shape: number[], label: string) => engine.tensor(shape, { label });
      return {
        attnA: tensor([r, C], `${h}.attn.c_attn.lora_A`),
        attnB: tensor([3 * C, r], `${h}.attn.c_attn.lora_B`),
        projA: tensor([r, C], `${h}.attn.c_proj.lora_A`),
        projB: tensor([C, r], `${h}.attn.c_proj.lora_B`),
        experts: {
          fcA: tensor([E, r, C], `${h}.mlp.experts.c_fc.lora_A`),
          fcB: tensor([E, H, r], `${h}.mlp.experts.c_fc.lora_B`),
          projA: tensor([E, r, H], `${h}.mlp.experts.c_proj.lora_A`),
          projB: tensor([E, C, r], `${h}.mlp.experts.c_proj.lora_B`),
        },
        router: E > 1 ? tensor([E, C], `${h}.mlp.router.weight`) : undefined,
      };
    });
    this.load(values);
  }

  /** The LoRA tensors (attention and experts), the experts' optimiser's parameters. */
  loraParams(): Tensor[] {
    return this.blocks.flatMap((b) => [
      b.attnA,
      b.attnB,
      b.projA,
      b.projB,
      ...EXPERT_PARTS.map(([key]) => b.experts[key]),
    ]);
  }

  /** The routers (blocks with E > 1), the router optimiser's parameters. */
  routerParams(): Tensor[] {
    return this.blocks.flatMap((b) => b.router ? [b.router] : []);
  }

  /** Writes every tensor from values under canonical names (all of this client's names). */
  load(values: ReadonlyMap<string, Float32Array>): void {
    const missing = [...this.shapes.keys()].filter((name) => !values.has(name));
    const unknown = [...values.keys()].filter((name) => !this.shapes.has(name));
    if (missing.length || unknown.length) {
      throw new Error(
        `adapters: load needs exactly this client's tensors; missing [${missing.join(", ")}], ` +
          `unknown [${unknown.join(", ")}]`,
      );
    }
    const stacks = new Map<Tensor, Float32Array>();
    for (const [name, shape] of this.shapes) {
      const data = values.get(name)!;
      if (data.length !== shape[0] * shape[1]) {
        throw new Error(`adapters: ${name} has ${data.length} values, expected [${shape}]`);
      }
      const { tensor, index } = this.#locate(name);
      if (index === undefined) {
        this.engine.write(tensor, data);
        continue;
      }
      let stack = stacks.get(tensor);
      if (!stack) stacks.set(tensor, stack = new Float32Array(tensor.size));
      stack.set(data, index * data.length);
    }
    for (const [tensor, data] of stacks) this.engine.write(tensor, data);
  }

  /** Replaces some tensors (e.g. the averaged shared ones) and keeps the rest. */
  async update(values: ReadonlyMap<string, Float32Array>): Promise<void> {
    const all = await this.values();
    for (const [name, data] of values) {
      if (!all.has(name)) throw new Error(`adapters: this client has no tensor ${name}`);
      all.set(name, data);
    }
    this.load(all);
  }

  /** Reads every tensor back under its canonical name (waits for the GPU). */
  values(): Promise<Map<string, Float32Array>> {
    return this.#read((tensor) => tensor);
  }

  /** Reads every tensor's gradient back under the tensor's canonical name. */
  gradients(): Promise<Map<string, Float32Array>> {
    return this.#read((tensor) => {
      if (!tensor.grad) throw new Error(`adapters: ${tensor.label} has no gradient`);
      return tensor.grad;
    });
  }

  async #read(source: (tensor: Tensor) => Tensor): Promise<Map<string, Float32Array>> {
    const read = new Map<Tensor, Float32Array>();
    const out = new Map<string, Float32Array>();
    for (const [name, shape] of this.shapes) {
      const { tensor, index } = this.#locate(name);
      let data = read.get(tensor);
      if (!data) {
        data = await this.engine.readF32(source(tensor));
        read.set(tensor, data);
      }
      const size = shape[0] * shape[1];
      out.set(name, index === undefined ? data : data.slice(index * size, (index + 1) * size));
    }
    return out;
  }

  /** The GPU tensor holding `name`, and the expert index inside it for stacked experts. */
  #locate(name: string): { tensor: Tensor; index?: number } {
    const match = /^h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.router|mlp\.experts\.(\d+))\.(.+)$/
      .exec(name);
    const block = match ? this.blocks[Number(match[1])] : undefined;
    if (!match || !block) throw new Error(`adapters: unknown tensor ${name}`);
    const [, , part, expert, leaf] = match;
    if (part === "attn.c_attn") return { tensor: leaf === "lora_A" ? block.attnA : block.attnB };
    if (part === "attn.c_proj") return { tensor: leaf === "lora_A" ? block.projA : block.projB };
    if (part === "mlp.router") return { tensor: block.router! };
    const key = EXPERT_PARTS.find(([, suffix]) => suffix === leaf)![0];
    return { tensor: block.experts[key], index: Number(expert) };
  }

  dispose(): void {
    for (const p of [...this.loraParams(), ...this.routerParams()]) p.dispose();
  }
}
