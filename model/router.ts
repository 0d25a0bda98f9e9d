// A client's routers at work (method.md §1), the same for every family: each block's router maps
// the MLP input to E logits, the top-k gate turns them into each expert's weight per token (the
// constant 1 when the block holds one expert), and the logits are kept for the load-balancing
// loss and the gates for analysis.
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { matmul } from "../kernels/matmul.ts";
import { topkGate } from "../kernels/topk_gate.ts";
import { type AdapterTensors, loraScale } from "./adapters.ts";

export abstract class Routing {
  /** Per routed block, [N, E]: the router's logits (for the load-balancing loss). */
  readonly routerLogits: Tensor[] = [];
  /** Per block, [N, E]: each expert's weight per token. */
  readonly gates: Tensor[] = [];
  /** The LoRA scaling s of the adapters. */
  protected readonly scale: number;

  constructor(readonly adapters: AdapterTensors) {
    this.scale = loraScale(adapters.config);
  }

  /** Block `block`'s gate for the MLP input x [N, hidden]. */
  protected gate(tape: Tape, block: number, x: Tensor): Tensor {
    const { router } = this.adapters.blocks[block];
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
    return gate;
  }
}
