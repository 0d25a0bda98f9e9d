// The server's policy in Flower's vocabulary (flwr.server.strategy.Strategy): it initialises the
// shared parameters, configures each round's fit (what every client receives), aggregates the
// clients' fit results into new shared parameters, and aggregates their evaluations. Everything
// crossing to or from a client is an encoded Message (fed/message.ts).
import type { NamedTensor } from "../model/safetensors.ts";
import { aggregate, type Weighting } from "./aggregate.ts";
import { decodeMessage, encodeMessage } from "./message.ts";

/** What a client gets before training or evaluating: shared tensors to load (null: none). */
export interface Instructions {
  round: number;
  parameters: Uint8Array | null;
}

/** A client's evaluation of one split. */
export interface EvaluateRes {
  client: number;
  loss: number;
  tokens: number;
}

export interface Strategy {
  /** The shared tensors every client starts from (the initial sync), or null. */
  initializeParameters(): Map<string, NamedTensor> | null;
  configureFit(round: number, clients: readonly number[]): Map<number, Instructions>;
  /** Folds the clients' encoded messages into the next shared parameters. */
  aggregateFit(round: number, results: readonly Uint8Array[]): void;
  /** What clients load before evaluating after `round` (round 0: before any training). */
  configureEvaluate(round: number, clients: readonly number[]): Map<number, Instructions>;
  /** The mean of the clients' perplexities (method.md §5's headline number). */
  aggregateEvaluate(results: readonly EvaluateRes[]): number;
  /** The current shared parameters (null when nothing is shared). */
  parameters(): Map<string, NamedTensor> | null;
  /** The global model after the last round: global.safetensors (null when there is none). */
  globalModel(): Map<string, NamedTensor> | null;
  /** Takes back `parameters()` of a resumed run. */
  restore(parameters: Map<string, NamedTensor> | null): void;
}

/**
 * FedAvg over whatever the clients send. The initial parameters reach every client before the
 * first evaluation (the sync every method starts from); afterwards clients get the latest average
 * before each fit and each evaluation, or nothing when the method shares nothing (`shares`).
 */
export class FedAvgStrategy implements Strategy {
  #parameters: Map<string, NamedTensor> | null;

  constructor(
    initial: Map<string, NamedTensor> | null,
    readonly shares: boolean,
    readonly weighting: Weighting,
  ) {
    this.#parameters = initial;
  }

  initializeParameters(): Map<string, NamedTensor> | null {
    return this.#parameters;
  }

  configureFit(round: number, clients: readonly number[]): Map<number, Instructions> {
    return this.#instructions(round, clients, this.shares);
  }

  configureEvaluate(round: number, clients: readonly number[]): Map<number, Instructions> {
    return this.#instructions(round, clients, round === 0 || this.shares);
  }

  #instructions(round: number, clients: readonly number[], send: boolean) {
    const parameters = send && this.#parameters
      ? encodeMessage({ round, sender: "server", trainTokens: 0, tensors: this.#parameters })
      : null;
    return new Map(clients.map((id) => [id, { round, parameters }]));
  }

  aggregateFit(round: number, results: readonly Uint8Array[]): void {
    if (!this.shares) return;
    const messages = results.map((bytes, i) => decodeMessage(bytes, `round ${round} result ${i}`));
    const stale = messages.find((m) => m.round !== round);
    if (stale) {
      throw new Error(`client ${stale.sender} answered round ${stale.round}, not ${round}`);
    }
    this.#parameters = aggregate(messages, this.weighting);
  }

  aggregateEvaluate(results: readonly EvaluateRes[]): number {
    return meanPerplexity(results);
  }

  parameters(): Map<string, NamedTensor> | null {
    return this.#parameters;
  }

  /** The average, when the method shares anything (otherwise only the initial sync). */
  globalModel(): Map<string, NamedTensor> | null {
    return this.shares ? this.#parameters : null;
  }

  restore(parameters: Map<string, NamedTensor> | null): void {
    this.#parameters = parameters;
  }
}

/** The plain mean of the clients' perplexities (method.md §5's headline number). */
export function meanPerplexity(results: readonly EvaluateRes[]): number {
  return results.reduce((sum, r) => sum + Math.exp(r.loss), 0) / results.length;
}
