// What the server's rounds ask of one client (the server side of the transport contract). In one
// process a LocalEndpoint calls the Client; across processes fed/http_server.ts carries the same
// calls as HTTP messages. Parameters and results are encoded Messages (fed/message.ts).
import type { StreamEvaluator } from "../model/evaluate.ts";
import type { BatchProgress } from "../model/progress.ts";
import type { Client, StepReport } from "./client.ts";

/** A client's reply to a fit: the message for the server and its mean training loss. */
export interface FitReply {
  result: Uint8Array;
  /** The client's expert steps so far. */
  step: number;
  meanLoss: number;
}

/** A client's reply to an evaluation: the mean test loss of each of its test streams. */
export interface EvaluateReply {
  step: number;
  losses: number[];
}

export interface ClientEndpoint {
  readonly id: number;
  readonly name: string;
  /** `onBatch` (optional) hears how far the evaluation has come, over all its test streams. */
  evaluate(
    round: number,
    parameters: Uint8Array | null,
    onBatch?: BatchProgress,
  ): Promise<EvaluateReply>;
  fit(
    round: number,
    steps: number,
    parameters: Uint8Array | null,
    onStep: (report: StepReport) => void,
  ): Promise<FitReply>;
}

/** A Client of this process as an endpoint, evaluated on `tests` (its test streams). */
export class LocalEndpoint implements ClientEndpoint {
  readonly #evaluators: StreamEvaluator[];

  constructor(readonly client: Client, tests: readonly Uint32Array[]) {
    this.#evaluators = tests.map((stream) => client.evaluator(stream));
  }

  get id(): number {
    return this.client.id;
  }

  get name(): string {
    return this.client.data.name;
  }

  async evaluate(
    _round: number,
    parameters: Uint8Array | null,
    onBatch?: BatchProgress,
  ): Promise<EvaluateReply> {
    await this.client.receive(parameters);
    const total = this.#evaluators.reduce((n, e) => n + e.windows, 0);
    let windowsBefore = 0, tokensBefore = 0;
    const losses: number[] = [];
    for (const evaluator of this.#evaluators) {
      let tokensHere = 0;
      losses.push(
        await evaluator.meanLoss(
          onBatch &&
            ((done, _total, tokens) => {
              tokensHere = tokens;
              onBatch(windowsBefore + done, total, tokensBefore + tokens);
            }),
        ),
      );
      windowsBefore += evaluator.windows;
      tokensBefore += tokensHere;
    }
    return { step: this.client.step, losses };
  }

  async fit(
    round: number,
    steps: number,
    parameters: Uint8Array | null,
    onStep: (report: StepReport) => void,
  ): Promise<FitReply> {
    await this.client.receive(parameters);
    let lossSum = 0;
    const result = await this.client.fit(round, steps, (report) => {
      lossSum += report.loss;
      onStep(report);
    });
    return { result, step: this.client.step, meanLoss: lossSum / steps };
  }

  dispose(): void {
    for (const evaluator of this.#evaluators) evaluator.dispose();
  }
}
