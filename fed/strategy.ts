// The server's policy in Flower's vocabulary (flwr.server.strategy.Strategy): it initialises the
// shared parameters, configures each round's fit (which clients train, and what they receive),
// aggregates the clients' fit results into new shared parameters, and aggregates their
// evaluations. Everything crossing to or from a client is an encoded Message (fed/message.ts).
//
// The server takes nothing on trust (fed/guard.ts): every result is validated before it may
// enter an aggregate, a refused one is left out of its round with its reason, and a round with
// too few accepted results keeps the previous global. One bad participant never stops the run.
import type { NamedTensor } from "../model/safetensors.ts";
import { aggregate } from "./aggregate.ts";
import type { FitOutcome, FitResult, Guard } from "./guard.ts";
import { encodeMessage } from "./message.ts";
import type { NoiseState } from "./noise.ts";
import { centralDpAggregate } from "./privacy.ts";

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

/** What a resumed run needs of its server beyond the parameters. */
export interface StrategyState {
  /** Central DP: where the noise stream stands. */
  noise?: NoiseState;
}

export interface Strategy {
  /** The shared tensors every client starts from (the initial sync), or null. */
  initializeParameters(): Map<string, NamedTensor> | null;
  /** The clients that train `round`: all of them, or those drawn (deterministic per round). */
  sample(round: number, clients: readonly number[]): number[];
  /** What each client drawn for `round` receives before it trains. */
  configureFit(round: number, clients: readonly number[]): Map<number, Instructions>;
  /** Folds the accepted results into the next shared parameters; says what it refused. */
  aggregateFit(round: number, results: readonly FitResult[]): FitOutcome;
  /** What clients load before evaluating after `round` (round 0: before any training). */
  configureEvaluate(round: number, clients: readonly number[]): Map<number, Instructions>;
  /** The mean of the clients' perplexities (method.md §5's headline number). */
  aggregateEvaluate(results: readonly EvaluateRes[]): number;
  /** The current shared parameters (null when nothing is shared). */
  parameters(): Map<string, NamedTensor> | null;
  /** The global model after the last round: global.safetensors (null when there is none). */
  globalModel(): Map<string, NamedTensor> | null;
  /** What a resumed run needs besides the parameters. */
  exportState(): StrategyState;
  /** Takes back `parameters()` and `exportState()` of a resumed run. */
  restore(parameters: Map<string, NamedTensor> | null, state?: StrategyState): void;
}

/**
 * FedAvg over the accepted results (plain, token-weighted, median or trimmed mean; or central
 * DP-FedAvg). The initial parameters reach every client before the first evaluation (the sync
 * every method starts from); afterwards clients get the latest aggregate before each fit and
 * each evaluation, or nothing when the method shares nothing (`shares`).
 */
export class FedAvgStrategy implements Strategy {
  #parameters: Map<string, NamedTensor> | null;

  constructor(
    initial: Map<string, NamedTensor> | null,
    readonly shares: boolean,
    readonly guard: Guard,
  ) {
    this.#parameters = initial;
  }

  initializeParameters(): Map<string, NamedTensor> | null {
    return this.#parameters;
  }

  sample(round: number, clients: readonly number[]): number[] {
    return this.guard.sample(round, clients);
  }

  configureFit(round: number, clients: readonly number[]): Map<number, Instructions> {
    return this.#instructions(round, this.sample(round, clients), this.shares);
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

  aggregateFit(round: number, results: readonly FitResult[]): FitOutcome {
    if (!this.shares || !this.#parameters) return { refusals: [], kept: null };
    const { accepted, refusals } = this.guard.screen(round, results, this.#parameters);
    const { dp, options } = this.guard;
    if (dp) {
      // Released every round, even with no update: skipping would tell how many arrived.
      this.#parameters = centralDpAggregate(
        this.#parameters,
        accepted.map((m) => m.tensors),
        dp.settings,
        dp.expectedClients,
        dp.noise,
      ).tensors;
      return { refusals, kept: null };
    }
    const kept = this.guard.shortfall(round, accepted.length);
    if (kept === null) {
      this.#parameters = aggregate(accepted, options.aggregation, { trim: options.trim });
    }
    return { refusals, kept };
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

  exportState(): StrategyState {
    return this.guard.dp ? { noise: this.guard.dp.noise.state() } : {};
  }

  restore(parameters: Map<string, NamedTensor> | null, state: StrategyState = {}): void {
    this.#parameters = parameters;
    this.guard.restoreNoise(state.noise);
  }
}

/** The plain mean of the clients' perplexities (method.md §5's headline number). */
export function meanPerplexity(results: readonly EvaluateRes[]): number {
  return results.reduce((sum, r) => sum + Math.exp(r.loss), 0) / results.length;
}
