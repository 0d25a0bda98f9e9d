// The Llama family on the engine (Llama, Qwen2), exactly as Hugging Face's LlamaForCausalLM and
// Qwen2ForCausalLM compute it: token embeddings, pre-RMSNorm blocks (causal grouped-query
// self-attention with rotary positions, a SiLU-gated MLP), a final RMSNorm and the output layer
// (tied to the embeddings or its own). Weights are nn.Linear [out, in] (y = x·Wᵀ + b). One
// function per layer; the tape derives the backward pass.
import type { Engine } from "../engine/device.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { add } from "../kernels/add.ts";
import { groupedAttention } from "../kernels/attention.ts";
import { crossEntropyWithRowLosses } from "../kernels/cross_entropy.ts";
import { embedding } from "../kernels/embedding.ts";
import { matmul } from "../kernels/matmul.ts";
import { rmsNorm } from "../kernels/rmsnorm.ts";
import { rope, ropeTable } from "../kernels/rope.ts";
import { ropeInverseFrequencies } from "../kernels/rope_frequencies.ts";
import { swiglu } from "../kernels/swiglu.ts";
import type { BaseModel, ModelOutput } from "./base_model.ts";
import { BaseParams } from "./base_params.ts";
import type { TokenBatch } from "./batch.ts";
import { type LlamaConfig, llamaParameterShapes } from "./llama_config.ts";

/** The attention projections of a block. */
export type Projection = "q_proj" | "k_proj" | "v_proj" | "o_proj";

/**
 * What adapts a frozen Llama (model/llama_comigs.ts): each attention projection's output given
 * its input and frozen output, and each block's MLP. Without adapters the plain layers run.
 */
export interface LlamaBlockAdapters {
  projection(tape: Tape, block: number, layer: Projection, x: Tensor, frozen: Tensor): Tensor;
  /** Block `block`'s MLP applied to m, the post_attention_layernorm output [N, C]. */
  mlp(tape: Tape, block: number, m: Tensor): Tensor;
}

export class Llama extends BaseParams implements BaseModel {
  /** The rotary cos|sin tables by sequence length (each shared by every layer's q and k). */
  readonly #ropeTables = new Map<number, Tensor>();
  readonly #frequencies: Float64Array;

  constructor(
    engine: Engine,
    readonly config: LlamaConfig,
    weights: ReadonlyMap<string, Float32Array>,
  ) {
    super(engine, "Llama", llamaParameterShapes(config), weights, "model.embed_tokens.weight");
    this.#frequencies = ropeInverseFrequencies(
      config.head_dim,
      config.rope_theta,
      config.rope_scaling,
    );
  }

  /** Records the forward pass of `batch` on `tape`, through `adapters` when given. */
  forward(tape: Tape, batch: TokenBatch, adapters?: LlamaBlockAdapters): ModelOutput {
    let x = embedding(tape, this.embeddingBlocks, batch.ids);
    const table = this.#ropeTable(batch.T);
    for (let i = 0; i < this.config.num_hidden_layers; i++) {
      x = this.block(tape, x, i, batch, table, adapters);
    }
    const hidden = rmsNorm(tape, x, this.param("model.norm.weight"), this.config.rms_norm_eps);
    const head = this.config.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    const logits = matmul(tape, hidden, this.param(head), { transB: true });
    const { loss, rowLosses } = crossEntropyWithRowLosses(tape, logits, batch.targets);
    return { logits, loss, tokenLosses: rowLosses };
  }

  /** x + attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x)). */
  block(
    tape: Tape,
    x: Tensor,
    i: number,
    batch: TokenBatch,
    table: Tensor,
    adapters?: LlamaBlockAdapters,
  ): Tensor {
    const layer = `model.layers.${i}`;
    const eps = this.config.rms_norm_eps;
    const normed = rmsNorm(tape, x, this.param(`${layer}.input_layernorm.weight`), eps);
    x = add(tape, x, this.attention(tape, normed, i, batch, table, adapters));
    const m = rmsNorm(tape, x, this.param(`${layer}.post_attention_layernorm.weight`), eps);
    return add(tape, x, adapters ? adapters.mlp(tape, i, m) : this.mlp(tape, m, i));
  }

  attention(
    tape: Tape,
    x: Tensor,
    i: number,
    batch: TokenBatch,
    table: Tensor,
    adapters?: LlamaBlockAdapters,
  ): Tensor {
    const { B, T } = batch;
    const { num_attention_heads: H, num_key_value_heads: KV, head_dim: D } = this.config;
    const project = (input: Tensor, layer: Projection) => {
      const frozen = this.linear(tape, input, `model.layers.${i}.self_attn.${layer}`);
      return adapters ? adapters.projection(tape, i, layer, input, frozen) : frozen;
    };
    const q = rope(tape, tape.reshape(project(x, "q_proj"), [B, T, H * D]), table);
    const k = rope(tape, tape.reshape(project(x, "k_proj"), [B, T, KV * D]), table);
    const v = tape.reshape(project(x, "v_proj"), [B, T, KV * D]);
    const heads = groupedAttention(tape, q, k, v, H, KV);
    return project(tape.reshape(heads, [B * T, H * D]), "o_proj");
  }

  /** down(silu(gate(m)) ⊙ up(m)). */
  mlp(tape: Tape, m: Tensor, i: number): Tensor {
    const mlp = `model.layers.${i}.mlp`;
    const h = swiglu(
      tape,
      this.linear(tape, m, `${mlp}.gate_proj`),
      this.linear(tape, m, `${mlp}.up_proj`),
    );
    return this.linear(tape, h, `${mlp}.down_proj`);
  }

  /** y = x·Wᵀ (+ b) with W the nn.Linear weight [out, in]. */
  linear(tape: Tape, x: Tensor, prefix: string): Tensor {
    return matmul(tape, x, this.param(`${prefix}.weight`), {
      transB: true,
      bias: this.params.get(`${prefix}.bias`),
    });
  }

  /** The cos|sin table for positions 0 .. T−1 (tapes recorded earlier keep theirs). */
  #ropeTable(T: number): Tensor {
    let table = this.#ropeTables.get(T);
    if (!table) this.#ropeTables.set(T, table = ropeTable(this.engine, this.#frequencies, T));
    return table;
  }

  override dispose(): void {
    super.dispose();
    for (const table of this.#ropeTables.values()) table.dispose();
    this.#ropeTables.clear();
  }
}
