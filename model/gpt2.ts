// GPT-2 on the engine, exactly as Hugging Face's GPT2LMHeadModel computes it: learned token and
// position embeddings, pre-LayerNorm blocks (causal self-attention, GELU-tanh MLP), a final
// LayerNorm and the output layer tied to the token embedding. Weights are Conv1D [in, out]
// (y = x·W + b). One function per layer, llm.c's shape; the tape derives the backward pass.
import type { Engine } from "../engine/device.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { add } from "../kernels/add.ts";
import { attention } from "../kernels/attention.ts";
import { crossEntropyWithRowLosses } from "../kernels/cross_entropy.ts";
import { embedding } from "../kernels/embedding.ts";
import { gelu } from "../kernels/gelu.ts";
import { layerNorm } from "../kernels/layernorm.ts";
import { matmul } from "../kernels/matmul.ts";
import type { BaseModel, ModelOutput } from "./base_model.ts";
import { BaseParams } from "./base_params.ts";
import type { TokenBatch } from "./batch.ts";
import { type GPT2Config, parameterShapes } from "./config.ts";

export interface GPT2Output extends ModelOutput {
  /** The final hidden states after ln_f, [B·T, C]. */
  hidden: Tensor;
}

/**
 * What adapts a frozen GPT-2 (model/comigs.ts): each attention linear layer's output given its
 * input and frozen output, and each block's MLP. Without adapters the plain layers run.
 */
export interface BlockAdapters {
  attentionLinear(
    tape: Tape,
    block: number,
    layer: "c_attn" | "c_proj",
    x: Tensor,
    frozen: Tensor,
  ): Tensor;
  /** Block `block`'s MLP applied to x, the ln_2 output [N, C]. */
  mlp(tape: Tape, block: number, x: Tensor): Tensor;
}

export class GPT2 extends BaseParams implements BaseModel {
  constructor(
    engine: Engine,
    readonly config: GPT2Config,
    weights: ReadonlyMap<string, Float32Array>,
  ) {
    super(engine, "GPT2", parameterShapes(config), weights, "wte.weight");
  }

  /** Records the forward pass of `batch` on `tape`, through `adapters` when given. */
  forward(tape: Tape, batch: TokenBatch, adapters?: BlockAdapters): GPT2Output {
    const tokens = embedding(tape, this.embeddingBlocks, batch.ids);
    let x = add(tape, tokens, embedding(tape, this.param("wpe.weight"), batch.positions));
    for (let i = 0; i < this.config.n_layer; i++) x = this.block(tape, x, i, batch, adapters);
    const hidden = this.layerNorm(tape, x, "ln_f");
    const logits = matmul(tape, hidden, this.param("wte.weight"), { transB: true });
    const { loss, rowLosses } = crossEntropyWithRowLosses(tape, logits, batch.targets);
    return { logits, loss, tokenLosses: rowLosses, hidden };
  }

  /** x + attn(ln_1(x)), then x + mlp(ln_2(x)). */
  block(tape: Tape, x: Tensor, i: number, batch: TokenBatch, adapters?: BlockAdapters): Tensor {
    const h = `h.${i}`;
    x = add(
      tape,
      x,
      this.attention(tape, this.layerNorm(tape, x, `${h}.ln_1`), i, batch, adapters),
    );
    const normed = this.layerNorm(tape, x, `${h}.ln_2`);
    return add(
      tape,
      x,
      adapters ? adapters.mlp(tape, i, normed) : this.mlp(tape, normed, `${h}.mlp`),
    );
  }

  attention(tape: Tape, x: Tensor, i: number, batch: TokenBatch, adapters?: BlockAdapters): Tensor {
    const linear = (input: Tensor, layer: "c_attn" | "c_proj") => {
      const frozen = this.linear(tape, input, `h.${i}.attn.${layer}`);
      return adapters ? adapters.attentionLinear(tape, i, layer, input, frozen) : frozen;
    };
    const C = this.config.n_embd;
    const qkv = linear(x, "c_attn");
    const heads = attention(tape, tape.reshape(qkv, [batch.B, batch.T, 3 * C]), this.config.n_head);
    return linear(tape.reshape(heads, [batch.B * batch.T, C]), "c_proj");
  }

  mlp(tape: Tape, x: Tensor, prefix: string): Tensor {
    return this.linear(
      tape,
      gelu(tape, this.linear(tape, x, `${prefix}.c_fc`)),
      `${prefix}.c_proj`,
    );
  }

  /** y = x·W + b with W the Conv1D weight [in, out]. */
  linear(tape: Tape, x: Tensor, prefix: string): Tensor {
    return matmul(tape, x, this.param(`${prefix}.weight`), { bias: this.param(`${prefix}.bias`) });
  }

  layerNorm(tape: Tape, x: Tensor, prefix: string): Tensor {
    return layerNorm(
      tape,
      x,
      this.param(`${prefix}.weight`),
      this.param(`${prefix}.bias`),
      this.config.layer_norm_epsilon,
    );
  }
}
