// A comigs client's ServerLink (fed/server_link.ts) over a Flower node (node.ts): the ServerApp's
// train and evaluate messages become our tasks, their ArrayRecord the encoded Message the client
// code takes (fed/message.ts), and the client's answers become Flower replies: a fit's shared
// tensors as the ArrayRecord with `num-examples` and its metrics, an evaluation's losses as
// metrics, an error as Flower's error reply. Every reply carries the node's own facts in a
// ConfigRecord ("config": its client id, category, experts, training tokens), by which the
// ServerApp orders, records and reports the nodes.
//
// The run's phases as the comigs ServerApp (flower/comigs_flower/server_app.py) sends them:
//   query 0        every node: its facts and the initial shared tensors its options give (the
//                  ServerApp keeps those of the lowest client id, as the simulation does)
//   evaluate 0     before training; the reply adds the frozen base model's test perplexity
//   train r, then evaluate r every `eval-every` rounds and at the last round
// The link ends the client's loop ("done") when the SuperLink says the run is over: normally
// after the node answered the last round's evaluation (and the ServerApp collected it), or
// early when the node missed the end (it was left out, or the ServerApp failed).
import type { NamedTensor } from "../../model/safetensors.ts";
import type { StepReport } from "../client.ts";
import { decodeMessage, encodeMessage } from "../message.ts";
import type { TrainOptions } from "../options.ts";
import type { Join, Reply, ServerLink, Task } from "../server_link.ts";
import type { FlowerNode, FlowerTask } from "./node.ts";

/** How often a node waiting for messages asks whether its run is still going. */
const RUN_CHECK_S = 10;

/** What the link knows of the run and of this node's client. */
export interface FlowerRun {
  runId: bigint;
  options: TrainOptions;
  /** The node's facts, sent in every reply's ConfigRecord. */
  facts: Record<string, string | boolean | number>;
  /** The initial shared tensors this node's options give (makeStrategy's), for the query. */
  initial: Map<string, NamedTensor> | null;
  /** Lines for the node's log (each answered message). */
  log(line: string): void;
}

/** The ServerApp's run as seen from one comigs client. */
export class FlowerServerLink implements ServerLink {
  /** The ServerApp samples the nodes online; a message a killed process had pulled is lost. */
  readonly skipsRounds = true;
  #waiting: FlowerTask | undefined;
  #current: FlowerTask | undefined;
  /** When the client got the current task (its work time goes to the log). */
  #startedMs = 0;
  #pretrainedPpl: number | null = null;
  #finished = false;
  /** Why the run ended before this node's last evaluation (null: it did not). */
  endedEarly: string | null = null;

  /** `first`: the message the node pulled to learn the run's options (answered through here). */
  constructor(readonly node: FlowerNode, first: FlowerTask, readonly run: FlowerRun) {
    this.#waiting = first;
  }

  /**
   * The node is active already (FlowerNode.connect). The frozen base model's test perplexity is
   * measured when the run has not trained yet (the query or the round-0 evaluation waits); the
   * round-0 evaluation's reply carries it.
   */
  async join(hello: (needPretrained: boolean) => Promise<Join>): Promise<void> {
    const first = this.#waiting;
    const join = await hello(first !== undefined && first.kind !== "train" && first.round === 0);
    this.#pretrainedPpl = join.pretrainedPpl;
  }

  async nextTask(): Promise<Task> {
    let checked = Date.now();
    while (true) {
      const task = this.#waiting ?? await this.node.pull();
      this.#waiting = undefined;
      if (!task) {
        // Once its last evaluation is answered, the node stays until the run is over: a node
        // that signs off before the ServerApp has collected its reply loses it (the SuperLink
        // answers for an offline node with "node unavailable", reply or not).
        if (this.#finished || Date.now() - checked > RUN_CHECK_S * 1000) {
          checked = Date.now();
          const over = await this.node.runOver(this.run.runId);
          if (over !== null) {
            if (!this.#finished) this.endedEarly = over;
            return { kind: "done" };
          }
        }
        await this.node.pause(this.node.pollIntervalS);
        continue;
      }
      if (task.runId !== this.run.runId) {
        const reason = `this comigs node takes part in run ${this.run.runId}, not ${task.runId}` +
          ` (its folder holds that run's state); start another node, with another --out`;
        await task.fail(reason);
        throw new Error(reason);
      }
      if (task.kind === "query") {
        await task.reply({ arrays: this.run.initial ?? undefined, config: this.run.facts });
        this.run.log(`answered query of run ${task.runId}`);
        continue;
      }
      this.#current = task;
      this.#startedMs = performance.now();
      const parameters = task.arrays && task.arrays.size
        ? encodeMessage({
          round: task.round,
          sender: "server",
          trainTokens: 0,
          tensors: task.arrays,
        })
        : null;
      return task.kind === "train"
        ? { kind: "fit", round: task.round, steps: this.run.options.localSteps, parameters }
        : { kind: "evaluate", round: task.round, parameters };
    }
  }

  async reply(reply: Reply, result?: Uint8Array): Promise<void> {
    const task = this.#current;
    if (!task) throw new Error("the client answered, but no Flower message was pending");
    this.#current = undefined;
    const facts = this.run.facts;
    if (reply.kind === "error") return await task.fail(reply.message);
    if (reply.kind === "fit") {
      const message = decodeMessage(result!, `round ${reply.round} result`);
      // FedAvg weighs by num-examples: 1 each for the uniform mean, the training tokens for
      // `tokens` (the ServerApp caps the claims as fed/aggregate.ts does).
      const weight = this.run.options.aggregation === "tokens" ? message.trainTokens : 1;
      await task.reply({
        arrays: message.tensors,
        metrics: {
          "num-examples": weight,
          "train-loss": reply.meanLoss,
          steps: reply.step,
          "train-tokens": message.trainTokens,
        },
        config: facts,
      });
    } else {
      // num-examples 1: Flower's weighted mean of test-ppl is then the plain mean of the
      // clients' perplexities, the run's headline number (method.md §5).
      const [loss] = reply.losses;
      const metrics: Record<string, number> = {
        "num-examples": 1,
        "test-loss": loss,
        "test-ppl": Math.exp(loss),
        steps: reply.step,
      };
      if (reply.round === 0 && this.#pretrainedPpl !== null) {
        metrics["pretrained-ppl"] = this.#pretrainedPpl;
      }
      await task.reply({ metrics, config: facts });
      if (reply.round === this.run.options.rounds) this.#finished = true;
    }
    const seconds = (performance.now() - this.#startedMs) / 1000;
    this.run.log(`answered ${task.kind} ${reply.round} (${seconds.toFixed(1)} s of work)`);
  }

  /** Flower carries no progress reports: the node shows its own. */
  progress(_report: StepReport): void {}
}
