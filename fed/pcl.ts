// PCL (method.md §4's "nice to have"): personalised aggregation, in one place. The server keeps
// every client's shared tensors and sends all of them, as one bundle (each tensor under
// `client.<sender>.<name>`), to every client; each client measures every sender's tensors on its
// own first validation windows and keeps their mix weighted by softmax(−perplexity). The server
// never sees a weight or a validation token.
import type { NamedTensor } from "../model/safetensors.ts";
import type { FitOutcome, FitResult, Guard } from "./guard.ts";
import { encodeMessage } from "./message.ts";
import {
  type EvaluateRes,
  type Instructions,
  meanPerplexity,
  type Strategy,
  type StrategyState,
} from "./strategy.ts";

/** A client weighs each sender's tensors on this many batches of its validation stream. */
export const PERSONAL_WINDOWS = 4;
/** A tensor of the bundle: client.<sender>.<canonical name>. */
const BUNDLED = /^client\.(\d+)\.(.+)$/;

/** How the i-th sender's tensor `name` is called in PCL's bundle of every client's tensors. */
export function bundleName(client: number, name: string): string {
  return `client.${client}.${name}`;
}

/** The server's side. Before the first results the bundle is the initial sync, like FedAvg's. */
export class PclStrategy implements Strategy {
  #bundle: Map<string, NamedTensor> | null = null;

  constructor(readonly initial: Map<string, NamedTensor>, readonly guard: Guard) {}

  initializeParameters(): Map<string, NamedTensor> {
    return this.initial;
  }

  sample(round: number, clients: readonly number[]): number[] {
    return this.guard.sample(round, clients);
  }

  configureFit(round: number, clients: readonly number[]): Map<number, Instructions> {
    return this.#instructions(round, this.sample(round, clients));
  }

  configureEvaluate(round: number, clients: readonly number[]): Map<number, Instructions> {
    return this.#instructions(round, clients);
  }

  #instructions(round: number, clients: readonly number[]) {
    const tensors = this.#bundle ?? this.initial;
    const parameters = encodeMessage({ round, sender: "server", trainTokens: 0, tensors });
    return new Map(clients.map((id) => [id, { round, parameters }]));
  }

  /** The accepted results, bundled (no norm check: each client measures the candidates). */
  aggregateFit(round: number, results: readonly FitResult[]): FitOutcome {
    const { accepted, refusals } = this.guard.screen(round, results, null);
    const kept = this.guard.shortfall(round, accepted.length);
    if (kept !== null) return { refusals, kept };
    const bundle = new Map<string, NamedTensor>();
    for (const m of accepted) {
      for (const [name, t] of m.tensors) bundle.set(bundleName(m.sender as number, name), t);
    }
    this.#bundle = bundle;
    return { refusals, kept };
  }

  aggregateEvaluate(results: readonly EvaluateRes[]): number {
    return meanPerplexity(results);
  }

  /** The bundle (or the initial sync before any result): what a resumed run restores. */
  parameters(): Map<string, NamedTensor> {
    return this.#bundle ?? this.initial;
  }

  /** None: the bundle holds every client's tensors, so it stays on the server. */
  globalModel(): null {
    return null;
  }

  exportState(): StrategyState {
    return {};
  }

  restore(parameters: Map<string, NamedTensor> | null): void {
    this.#bundle = parameters && isBundle(parameters.keys()) ? parameters : null;
  }
}

/** Whether a message's tensors are a bundle (rather than plain shared tensors). */
export function isBundle(names: Iterable<string>): boolean {
  return [...names].some((name) => BUNDLED.test(name));
}

/**
 * The client's side: the mix Σ_j w_j·θ_j of the bundle's senders' tensors, w = softmax(−p) over
 * p_j = `perplexityOf(θ_j)` (float64, in sender order). Every shared tensor comes from the
 * bundle, so the result depends on the bundle alone: mixing the same bundle twice (evaluation,
 * then the next fit) gives the same tensors.
 */
export async function personalMix(
  bundle: ReadonlyMap<string, Float32Array>,
  perplexityOf: (tensors: Map<string, Float32Array>) => Promise<number>,
  receiver: number,
): Promise<{ mixed: Map<string, Float32Array>; weights: number[] }> {
  const candidates = new Map<number, Map<string, Float32Array>>();
  for (const [key, data] of bundle) {
    const match = BUNDLED.exec(key);
    if (!match) throw new Error(`client ${receiver}: "${key}" in a bundle is not client.<id>.*`);
    const sender = Number(match[1]);
    if (!candidates.has(sender)) candidates.set(sender, new Map());
    candidates.get(sender)!.set(match[2], data);
  }
  const senders = [...candidates.keys()].sort((a, b) => a - b);
  const perplexity: number[] = [];
  for (const sender of senders) perplexity.push(await perplexityOf(candidates.get(sender)!));
  const best = Math.min(...perplexity);
  const raw = perplexity.map((p) => Math.exp(best - p));
  const total = raw.reduce((a, b) => a + b, 0);
  const weights = raw.map((w) => w / total);
  const mixed = new Map<string, Float32Array>();
  for (const name of candidates.get(senders[0])!.keys()) {
    const sum = new Float64Array(candidates.get(senders[0])!.get(name)!.length);
    senders.forEach((sender, j) => {
      const data = candidates.get(sender)!.get(name)!;
      for (let i = 0; i < sum.length; i++) sum[i] += weights[j] * data[i];
    });
    mixed.set(name, Float32Array.from(sum));
  }
  return { mixed, weights };
}
