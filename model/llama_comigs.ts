// The Llama family adapted the CoMiGS way (method.md §1 on a SwiGLU MLP): the base stays
// frozen; LoRA on the adapted attention projections (any of q, k, v, o); every MLP becomes a
// mixture of the client's E experts, expert j = down_j(silu(gate_j(m)) ⊙ up_j(m)) with each
// projection its frozen base plus expert j's own LoRA, fused so the three frozen products run
// once whatever E is (kernels/moe_swiglu.ts), weighted per token by the router's top-k gate.
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { loraLinear } from "../kernels/lora.ts";
import { moeSwiglu } from "../kernels/moe_swiglu.ts";
import type { AdapterTensors } from "./adapters.ts";
import { Routing } from "./router.ts";
import type { Llama, LlamaBlockAdapters, Projection } from "./llama.ts";

export class LlamaMixture extends Routing implements LlamaBlockAdapters {
  constructor(readonly model: Llama, adapters: AdapterTensors) {
    super(adapters);
  }

  projection(tape: Tape, block: number, layer: Projection, x: Tensor, frozen: Tensor): Tensor {
    const pair = this.adapters.blocks[block].attention.get(layer);
    return pair ? loraLinear(tape, x, frozen, pair.A, pair.B, this.scale) : frozen;
  }

  mlp(tape: Tape, block: number, m: Tensor): Tensor {
    const { experts } = this.adapters.blocks[block];
    const mlp = `model.layers.${block}.mlp`;
    return moeSwiglu(tape, m, this.gate(tape, block, m), {
      gateWeight: this.model.param(`${mlp}.gate_proj.weight`),
      upWeight: this.model.param(`${mlp}.up_proj.weight`),
      downWeight: this.model.param(`${mlp}.down_proj.weight`),
      gateA: experts.gateA,
      gateB: experts.gateB,
      upA: experts.upA,
      upB: experts.upB,
      downA: experts.downA,
      downB: experts.downB,
    }, this.scale);
  }
}
