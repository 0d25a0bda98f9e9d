// The adapters of one client (method.md §1, interfaces.md "Adapters of one client"): attention
// LoRA on every block (GPT-2: c_attn and c_proj; Llama family: the adapted q/k/v/o projections),
// E_i LoRA experts on every MLP (expert 0 is the generalist) and, when E_i > 1, a router. On the
// CPU they are a map from canonical names to f32 data (what files, messages and aggregation see);
// on the GPU each block's experts are stacked into one tensor per LoRA matrix, so the fused
// mixture kernel binds all experts at once (model/adapter_layout.ts says where each name lives).
import type { Engine } from "../engine/device.ts";
import type { Tensor } from "../engine/tensor.ts";
import {
  adapterLayout,
  type BlockLayout,
  layoutShapes,
  LORA_TARGETS,
  type LoraTarget,
} from "./adapter_layout.ts";
import { type BaseConfig, dimsOf, isLlama } from "./base.ts";
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
  /** Llama family: the attention projections with LoRA (absent: all four). */
  targets?: LoraTarget[];
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
export function adapterShapes(base: BaseConfig, config: AdapterConfig): Map<string, number[]> {
  return layoutShapes(adapterLayout(base, config), config.rank, dimsOf(base).hidden);
}

export { adapterRole, isAdapterName } from "./adapter_layout.ts";

/**
 * Fresh adapters, deterministic from `seed`: lora_A ~ U(−1/√in, 1/√in) (PEFT's Kaiming-uniform
 * bound), lora_B = 0 (so the adapted model starts as the base), router N(0, 0.02²).
 */
export function initAdapters(
  base: BaseConfig,
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
    ...config.targets ? { lora_targets: config.targets.join(",") } : {},
  };
}

/** Reads the metadata of an adapters file; every problem is named with the file. */
export function parseAdapterMetadata(
  metadata: Record<string, string>,
  base: BaseConfig,
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
  const layers = dimsOf(base).layers;
  if (experts.length !== 1 && experts.length !== layers) {
    fail(
      `__metadata__ "n_experts" = "${expertsText}" lists ${experts.length} layers; the model ` +
        `has ${layers} (give one count for all layers or one per layer)`,
    );
  }
  const config: AdapterConfig = {
    rank: integer("lora_rank", 1),
    alpha: number("lora_alpha"),
    scaling: scaling as LoraScaling,
    topK: integer("top_k", 1),
    experts: experts.length === 1 ? new Array(layers).fill(experts[0]) : experts,
    lbCoef: number("lb_coef", "0.01"),
    lbRho: number("lb_rho", "0.5"),
    ...parseTargets(metadata.lora_targets, base, fail),
  };
  if (!(config.lbCoef >= 0)) fail(`__metadata__ "lb_coef" = ${config.lbCoef} must be ≥ 0`);
  if (!(config.lbRho > 0 && config.lbRho < 1)) {
    fail(`__metadata__ "lb_rho" = ${config.lbRho} must be in (0, 1)`);
  }
  return config;
}

/** `lora_targets`: the adapted attention projections of a Llama-family file (absent: all). */
function parseTargets(
  text: string | undefined,
  base: BaseConfig,
  fail: (message: string) => never,
): { targets?: LoraTarget[] } {
  if (text === undefined) return {};
  if (!isLlama(base)) fail(`__metadata__ "lora_targets" is for the Llama family, not GPT-2`);
  const targets = text === "" ? [] : text.split(",");
  const known = LORA_TARGETS as readonly string[];
  if (targets.some((t) => !known.includes(t)) || new Set(targets).size !== targets.length) {
    fail(
      `__metadata__ "lora_targets" = "${text}": a comma-separated subset of ` +
        `${LORA_TARGETS.join(",")} without repeats`,
    );
  }
  return { targets: targets as LoraTarget[] };
}

export interface AdapterFile {
  config: AdapterConfig;
  values: Map<string, Float32Array>;
}

/** Loads and validates an adapters file against the base model it adapts. */
export async function loadAdapters(path: string, base: BaseConfig): Promise<AdapterFile> {
  return decodeAdapters(await readCheckpointBytes(path), base, path);
}

/** An adapters file's bytes (encodeAdapters), validated against the base model it adapts. */
export function decodeAdapters(
  bytes: Uint8Array,
  base: BaseConfig,
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
        `${dimsOf(base).layers}-layer, ${dimsOf(base).hidden}-wide model: ` +
        problems.join("; "),
    );
  }
  const values = new Map<string, Float32Array>();
  for (const name of expected.keys()) values.set(name, tensors.get(name)!.data);
  return { config, values };
}

export async function saveAdapters(
  path: string,
  base: BaseConfig,
  file: AdapterFile,
): Promise<void> {
  await writeFileAtomic(path, encodeAdapters(base, file));
}

/** An adapter file's bytes (safetensors with the config in its metadata). */
export function encodeAdapters(
  base: BaseConfig,
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
  /** Each adapted attention layer's LoRA pair (A [r, in], B [out, r]), by layer name. */
  attention: Map<string, { A: Tensor; B: Tensor }>;
  /** The experts' LoRA matrices stacked [E, rows, cols], by the mixture kernel's keys. */
  experts: Record<string, Tensor>;
  /** [E, hidden]; absent when E = 1. */
  router?: Tensor;
}

/** A client's adapters on the GPU, read and written through canonical names. */
export class AdapterTensors {
  readonly blocks: BlockAdapterTensors[];
  readonly shapes: Map<string, number[]>;
  /** Canonical name → the GPU tensor holding it (and the expert's index in a stack). */
  readonly #places = new Map<string, { tensor: Tensor; index?: number }>();

  constructor(
    readonly engine: Engine,
    readonly base: BaseConfig,
    readonly config: AdapterConfig,
    values: ReadonlyMap<string, Float32Array>,
  ) {
    this.shapes = adapterShapes(base, config);
    const r = config.rank;
    const tensor = (shape: number[], label: string) => engine.tensor(shape, { label });
    this.blocks = adapterLayout(base, config).map((block: BlockLayout) => {
      const attention = new Map(block.attention.map((a) => {
        const pair = {
          A: tensor([r, a.inputs], a.name("lora_A")),
          B: tensor([a.outputs, r], a.name("lora_B")),
        };
        this.#places.set(a.name("lora_A"), { tensor: pair.A });
        this.#places.set(a.name("lora_B"), { tensor: pair.B });
        return [a.layer, pair];
      }));
      const experts: Record<string, Tensor> = {};
      for (const e of block.experts) {
        const stack = tensor(
          [block.count, e.rows, e.cols],
          e.name(0).replace(".experts.0.", ".experts."),
        );
        experts[e.key] = stack;
        for (let j = 0; j < block.count; j++) {
          this.#places.set(e.name(j), { tensor: stack, index: j });
        }
      }
      let router: Tensor | undefined;
      if (block.router) {
        router = tensor([block.count, dimsOf(base).hidden], block.router);
        this.#places.set(block.router, { tensor: router });
      }
      return { attention, experts, router };
    });
    this.load(values);
  }

  /** The LoRA tensors (attention and experts), the experts' optimiser's parameters. */
  loraParams(): Tensor[] {
    return this.blocks.flatMap((b) => [
      ...[...b.attention.values()].flatMap(({ A, B }) => [A, B]),
      ...Object.values(b.experts),
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
      const { tensor, index } = this.#places.get(name)!;
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
      const { tensor, index } = this.#places.get(name)!;
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

  dispose(): void {
    for (const p of [...this.loraParams(), ...this.routerParams()]) p.dispose();
  }
}
