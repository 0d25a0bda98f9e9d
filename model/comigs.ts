// GPT-2 adapted the CoMiGS way (method.md §1): the base stays frozen; attention LoRA on c_attn
// and c_proj; every MLP becomes a mixture of the client's E LoRA experts sharing the frozen MLP
// (kernels/moe_mlp.ts), weighted per token by a router's top-k gate, plus the load-balancing
// loss over the blocks that have a router.
import { ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { add } from "../kernels/add.ts";
import { scale } from "../kernels/fill.ts";
import { loadBalance } from "../kernels/load_balance.ts";
import { loraLinear } from "../kernels/lora.ts";
import { matmul } from "../kernels/matmul.ts";
import { moeMlp } from "../kernels/moe_mlp.ts";
import { topkGate } from "../kernels/topk_gate.ts";
import { type AdapterTensors, loraScale } from "./adapters.ts";
import { dimsOf } from "./base.ts";
import type { BaseModel } from "./base_model.ts";
import { type BlockAdapters, GPT2 } from "./gpt2.ts";
import type { TokenBatch } from "./batch.ts";

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

/** LoRA on the attention layers; subclasses decide what the MLP is. */
export abstract class AttentionLora implements BlockAdapters {
  protected readonly scale: number;

  constructor(readonly model: GPT2, readonly adapters: AdapterTensors) {
    this.scale = loraScale(adapters.config);
  }

  abstract mlp(tape: Tape, block: number, x: Tensor): Tensor;

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
}

/** The adapters of one client as GPT2's per-block hooks; collects router logits and gates. */
class MixtureOfExperts extends AttentionLora {
  readonly routerLogits: Tensor[] = [];
  readonly gates: Tensor[] = [];

  mlp(tape: Tape, block: number, x: Tensor): Tensor {
    const { experts, router } = this.adapters.blocks[block];
    let gate: Tensor;
    if (router) {
      const logits = matmul(tape, x, router, { transB: true });
      this.routerLogits.push(logits);
      gate = topkGate(tape, logits, this.adapters.config.topK);
    } else {
      // One expert: its output as it is.
      gate = tape.tensor([x.shape[0], 1], `gate 1 (block ${block})`);
      tape.engine.write(gate, new Float32Array(x.shape[0]).fill(1));
    }
    this.gates.push(gate);
    const mlp = `h.${block}.mlp`;
    return moeMlp(tape, x, gate, {
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
  if (!(model instanceof GPT2)) {
    throw new ShapeError("CoMiGS adapters on the Llama family are not wired in yet");
  }
  const { n_layer, n_embd } = model.config;
  const width = dimsOf(adapters.base).hidden;
  if (adapters.config.experts.length !== n_layer || width !== n_embd) {
    throw new ShapeError(
      `adapters for ${adapters.config.experts.length} blocks of width ${width} ` +
        `on a model of ${n_layer} blocks of width ${n_embd}`,
    );
  }
  const mixture = new MixtureOfExperts(model, adapters);
  const { loss, logits, tokenLosses } = model.forward(tape, batch, mixture);
  const { topK, lbRho, lbCoef } = adapters.config;
  const perBlock = mixture.routerLogits.map((logits) => loadBalance(tape, logits, topK, lbRho));
  const gates = mixture.gates;
  if (perBlock.length === 0) return { loss, objective: loss, logits, tokenLosses, gates };
  const total = perBlock.reduce((sum, value) => add(tape, sum, value));
  const lb = perBlock.length === 1 ? total : scale(tape, total, 1 / perBlock.length);
  const objective = lbCoef > 0 ? add(tape, loss, scale(tape, lb, lbCoef)) : loss;
  return { loss, lb, objective, logits, tokenLosses, gates };
}
