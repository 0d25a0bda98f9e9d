// The server's defences, the same for every strategy and transport (the in-process simulation,
// our HTTP server; the Flower App applies the same checks, aggregation and DP in Python):
// which clients train a round (everyone, or K drawn from the seed and the round), which results
// may enter the aggregate (fed/validate_update.ts: exactly the shared names and shapes, finite
// values, the right sender and round, an update no larger than an honest client's), and whether
// enough were accepted.
import type { NamedTensor } from "../model/safetensors.ts";
import { quorumShortfall } from "./aggregate.ts";
import type { Message } from "./message.ts";
import { GaussianNoise, type NoiseState, secureKey, seedKey } from "./noise.ts";
import type { TrainOptions } from "./options.ts";
import type { DpSettings } from "./privacy.ts";
import { poissonSampleClients, sampleClients } from "./sampling.ts";
import { type Refusal, shapesOf, validateUpdate } from "./validate_update.ts";

/** A client's encoded result of a round's fit. */
export interface FitResult {
  client: number;
  bytes: Uint8Array;
}

/** What aggregating a round did besides the new global. */
export interface FitOutcome {
  /** Results left out of the round, with their reasons. */
  refusals: Refusal[];
  /** Why the previous global was kept (too few accepted results), or null. */
  kept: string | null;
}

/** Central DP: the server clips and noises the sum of the updates (fed/privacy.ts). */
export interface CentralDp {
  settings: DpSettings;
  noise: GaussianNoise;
  /** The fixed denominator of DP-FedAvg: the clients expected per round (K, or N). */
  expectedClients: number;
}

/** The DP noise key of a run: from --dp-seed (reproducible, no privacy), else a secret one. */
export function noiseKey(seed: number | null): string {
  return seed === null ? secureKey() : seedKey(seed);
}

export class Guard {
  dp: CentralDp | null;

  constructor(
    readonly options: TrainOptions,
    /** The largest accepted L2 norm of an update. */
    readonly maxUpdateNorm: number,
    /** The plain shared names and shapes every result must hold (PCL's bundle aside). */
    readonly shapes: ReadonlyMap<string, readonly number[]>,
  ) {
    const { dp, dpClip: clip, dpNoise: noise, dpDelta: delta, dpSeed } = options;
    this.dp = dp === "central"
      ? {
        settings: { mode: dp, clip, noise, delta },
        noise: GaussianNoise.fromKey(noiseKey(dpSeed)),
        expectedClients: options.clientsPerRound ?? options.clients,
      }
      : null;
  }

  /** The clients that train `round`: all of them, or --clients-per-round drawn. */
  sample(round: number, clients: readonly number[]): number[] {
    const k = this.options.clientsPerRound;
    if (k === null || k >= clients.length) return [...clients];
    // Central DP's accounting assumes Poisson sampling, drawn with the secret key.
    const drawn = this.dp
      ? poissonSampleClients(this.dp.noise.state().key, round, clients.length, k / clients.length)
      : sampleClients(this.options.seed, round, clients.length, k);
    return drawn.map((i) => clients[i]);
  }

  /**
   * The results of `round` that may enter the aggregate, in client order, and the refused ones.
   * `global`: what the clients started from (null: PCL, whose bundle has no one global).
   */
  screen(
    round: number,
    results: readonly FitResult[],
    global: ReadonlyMap<string, NamedTensor> | null,
  ): { accepted: Message[]; refusals: Refusal[] } {
    const accepted: Message[] = [], refusals: Refusal[] = [];
    for (const { client, bytes } of results) {
      const verdict = validateUpdate(bytes, {
        round,
        client,
        shapes: global ? shapesOf(global) : this.shapes,
        global,
        maxUpdateNorm: this.maxUpdateNorm,
      });
      if (verdict.accepted) accepted.push(verdict.message);
      else refusals.push(verdict.refusal);
    }
    return { accepted, refusals };
  }

  /** Why the round keeps the previous global (fewer accepted than minClients), or null. */
  shortfall(round: number, accepted: number): string | null {
    return quorumShortfall(round, accepted, this.options.minClients);
  }

  /** Continues the noise stream of a resumed run. */
  restoreNoise(state: NoiseState | undefined): void {
    if (this.dp && state) this.dp.noise = GaussianNoise.restore(state);
  }
}
