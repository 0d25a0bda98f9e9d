// A base model adapted the CoMiGS way (method.md §1): the base stays frozen; attention LoRA;
// every MLP becomes a mixture of the client's E LoRA experts sharing the frozen MLP, weighted per
// token by a router's top-k gate (model/router.ts), plus the load-balancing loss over the blocks
// that have a router. GPT-2's hooks are here (c_attn, c_proj; kernels/moe_mlp.ts); the Llama
// family's in model/llama_comigs.ts.
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { add } from "../kernels/add.ts";
import { scale } from "../kernels/fill.ts";
import { loadBalance } from "../kernels/load_balance.ts";
import { loraLinear } from "../kernels/lora.ts";
import { moeMlp } from "../kernels/moe_mlp.ts";
import type { AdapterTensors } from "./adapters.ts";
import { dimsOf } from "./base.ts";
import type { BaseModel, ModelOutput } from "./base_model.ts";
import type { TokenBatch } from "./batch.ts";
import { type BlockAdapters, GPT2 } from "./gpt2.ts";
import { Llama } from "./llama.ts";
import { LlamaMixture } from "./llama_comigs.ts";
import { Routing } from "./router.ts";

export interface AdaptedOutput {
  /** [1]: mean next-token cross-entropy (no auxiliary term). */
  loss: Tensor;
  /** [1]: LB averaged over the blocks with a router; absent when no block has one. */
  lb?: Tensor;
  /** [1]: what training minimises: loss + λ·LB (the loss itself when λ = 0 or no router). */
  objective: Tensor;
  /** [B·T, V]. */
  logits: Tensor;
  /** [B·T]: each position's cross-entropy (no gradient). */
  tokenLosses: Tensor;
  /**
   * One per block, [B·T, E]: the weight of each expert per token (the top-k gate; the constant
   * 1 when E = 1), what the MLP mixes with. For analysis (cli/routing.ts); read after a forward.
   */
  gates: Tensor[];
}

/** GPT-2's hooks for one client's adapters: attention LoRA and the mixture of experts. */
export class Gpt2Mixture extends Routing implements BlockAdapters {
  constructor(readonly model: GPT2, adapters: AdapterTensors) {
    super(adapters);
  }

  attentionLinear(
    tape: Tape,
    block: number,
    layer: "c_attn" | "c_proj",
    x: Tensor,
    frozen: Tensor,
  ): Tensor {
    const { A, B } = this.adapters.blocks[block].attention.get(layer)!;
    return loraLinear(tape, x, frozen, A, B, this.scale);
  }

  mlp(tape: Tape, block: number, x: Tensor): Tensor {
    const { experts } = this.adapters.blocks[block];
    const mlp = `h.${block}.mlp`;
    return moeMlp(tape, x, this.gate(tape, block, x), {
      fcWeight: this.model.param(`${mlp}.c_fc.weight`),
      fcBias: this.model.param(`${mlp}.c_fc.bias`),
      projWeight: this.model.param(`${mlp}.c_proj.weight`),
      projBias: this.model.param(`${mlp}.c_proj.bias`),
      fcA: experts.fcA,
      fcB: experts.fcB,
      projA: experts.projA,
      projB: experts.projB,
    }, this.scale);
  }
}

/** Records the adapted model's forward pass of `batch`, with its training objective. */
export function forwardAdapted(
  tape: Tape,
  model: BaseModel,
  adapters: AdapterTensors,
  batch: TokenBatch,
): AdaptedOutput {
  const dims = dimsOf(model.config), width = dimsOf(adapters.base).hidden;
  if (adapters.config.experts.length !== dims.layers || width !== dims.hidden) {
    throw new ShapeError(
      `adapters for ${adapters.config.experts.length} blocks of width ${width} ` +
        `on a model of ${dims.layers} blocks of width ${dims.hidden}`,
    );
  }
  let mixture: Routing;
  let output: ModelOutput;
  if (model instanceof GPT2) {
    const hooks = new Gpt2Mixture(model, adapters);
    output = model.forward(tape, batch, hooks);
    mixture = hooks;
  } else if (model instanceof Llama) {
    const hooks = new LlamaMixture(model, adapters);
    output = model.forward(tape, batch, hooks);
    mixture = hooks;
  } else throw new ShapeError(`forwardAdapted: no CoMiGS adapters for ${model.constructor.name}`);
  const { loss, logits, tokenLosses } = output;
  const { topK, lbRho, lbCoef } = adapters.config;
  const perBlock = mixture.routerLogits.map((logits) => loadBalance(tape, logits, topK, lbRho));
  const gates = mixture.gates;
  if (perBlock.length === 0) return { loss, objective: loss, logits, tokenLosses, gates };
  const total = perBlock.reduce((sum, value) => add(tape, sum, value));
  const lb = perBlock.length === 1 ? total : scale(tape, total, 1 / perBlock.length);
  const objective = lbCoef > 0 ? add(tape, loss, scale(tape, lb, lbCoef)) : loss;
  return { loss, lb, objective, logits, tokenLosses, gates };
}
