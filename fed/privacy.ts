// Differential privacy of the shared update (DP-FedAvg, McMahan, Ramage, Talwar, Zhang 2018,
// "Learning Differentially Private Recurrent Language Models"). Each client's update (its shared
// tensors minus the global it started from) is clipped to L2 norm C, and Gaussian noise of
// standard deviation z·C is added:
// - central: the server clips every accepted update, sums them in float64 in client order, adds
//   N(0, (zC)²) to every coordinate of the sum and divides by the fixed expected number of clients
//   per round (q·N = K), not by how many arrived: with a fixed denominator one client changes the
//   average by at most C/K, which is what the accountant assumes; dividing by the arrivals would
//   let one client's presence change every other client's weight (McMahan et al. 2018, §2, the
//   "fixed-denominator estimator"). The noise is added even when no update arrived.
// - local: each client clips and noises its own update before it leaves the device; the server
//   averages what arrives as usual and never sees an un-noised update.
import type { NamedTensor } from "../model/safetensors.ts";
import { RdpAccountant } from "./accountant.ts";
import type { GaussianNoise } from "./noise.ts";
import { l2Norm, sumOfSquares, updateOf } from "./update.ts";

export type DpMode = "central" | "local";
export const DP_MODES: readonly DpMode[] = ["central", "local"];

export interface DpSettings {
  mode: DpMode;
  /** C: every update is clipped to this L2 norm. */
  clip: number;
  /** z: the noise's standard deviation is z·C. */
  noise: number;
  /** δ of the (ε, δ) guarantee reported. */
  delta: number;
}

/** Refuses settings that give no guarantee, naming the flag to fix. */
export function checkDpSettings(settings: DpSettings): void {
  const { mode, clip, noise, delta } = settings;
  if (!DP_MODES.includes(mode)) {
    throw new RangeError(`--dp ${mode}: use one of ${DP_MODES.join(", ")}`);
  }
  if (!(clip > 0) || !Number.isFinite(clip)) {
    throw new RangeError(`--dp-clip ${clip}: the clipping norm C must be a positive number`);
  }
  if (!(noise > 0) || !Number.isFinite(noise)) {
    throw new RangeError(
      `--dp-noise ${noise}: the noise multiplier z must be positive (z = 0 gives no privacy)`,
    );
  }
  if (!(delta > 0 && delta < 1)) {
    throw new RangeError(`--dp-delta ${delta}: δ must be in (0, 1), e.g. 1e-5`);
  }
}

/**
 * The accountant of a DP run. Central: every round is the sampled Gaussian mechanism on the sum
 * (one client changes it by at most C; noise z·C), each client taking part with probability
 * `samplingRate` = K/N. Local: one client's own guarantee, counted over the rounds it took part
 * in; the server sees who sent, so sampling hides nothing (q = 1), and any clipped update may be
 * replaced by any other, so the sensitivity is 2C and the noise multiplier z/2.
 */
export function dpAccountant(settings: DpSettings, samplingRate: number): RdpAccountant {
  checkDpSettings(settings);
  return settings.mode === "central"
    ? new RdpAccountant(samplingRate, settings.noise, settings.delta)
    : new RdpAccountant(1, settings.noise / 2, settings.delta);
}

const F32_BITS = new Uint32Array(1);
const F32_VALUE = new Float32Array(F32_BITS.buffer);

/** The float32 nearest to x among those no farther from 0 than x (rounding toward zero). */
function towardZeroF32(x: number): number {
  const f = Math.fround(x);
  if (Math.abs(f) <= Math.abs(x)) return f;
  F32_VALUE[0] = f;
  F32_BITS[0] -= 1; // one ulp toward zero, for either sign (and ±∞ → ±max)
  return F32_VALUE[0];
}

export interface ClippedUpdate {
  /** The update scaled to L2 norm ≤ C, as float32. */
  update: Map<string, Float32Array>;
  /** Its norm before clipping (worth recording: how often C bites tells whether C fits). */
  norm: number;
}

/**
 * Scales `update` (in float64) to L2 norm at most `clip` and rounds it to float32, so that the
 * exact norm of the float32 values is ≤ clip (rounding to nearest could push it above). The
 * guarantee is the check: the float64 sum of squares of the result (each square exact, the sum
 * within (n−1)·2⁻⁵³ of the exact one for n values) must stay below clip²·(1 − (n+3)·2⁻⁵²), or the
 * scale shrinks by the shortfall and the values are rounded again. Rounding toward zero makes
 * the first pass almost always pass (it leaves a margin of about 2⁻²⁴ against float64 errors far
 * smaller), so a second pass is rare and a third never needed. An update within the bound is
 * only rounded.
 */
export function clipUpdate(
  update: ReadonlyMap<string, ArrayLike<number>>,
  clip: number,
): ClippedUpdate {
  if (!(clip > 0) || !Number.isFinite(clip)) throw new RangeError(`clip norm ${clip}`);
  const norm = l2Norm(update);
  if (!Number.isFinite(norm)) throw new RangeError(`clipUpdate: the update's norm is ${norm}`);
  let count = 0;
  for (const values of update.values()) count += values.length;
  const limit = clip * clip * (1 - (count + 3) * 2 ** -52);
  let scale = norm > clip ? clip / norm : 1;
  for (let attempt = 0; attempt < 8; attempt++) {
    const out = new Map<string, Float32Array>();
    for (const [name, values] of update) {
      const rounded = new Float32Array(values.length);
      for (let i = 0; i < values.length; i++) rounded[i] = towardZeroF32(scale * values[i]);
      out.set(name, rounded);
    }
    const squares = sumOfSquares(out);
    if (squares <= limit) return { update: out, norm };
    scale *= Math.min(1 - 2 ** -24, Math.sqrt(limit / squares));
  }
  throw new Error(`clipUpdate: could not bring ${count} values under norm ${clip}`);
}

export interface CentralDpResult {
  /** The next global: the previous one plus the noised average update, float32. */
  tensors: Map<string, NamedTensor>;
  /** Each client's update norm before clipping, in the order given. */
  norms: number[];
}

/**
 * Central DP-FedAvg for one round: global + (Σ_c clip(update_c) + N(0, (zC)²)) / expectedClients.
 * `clients` are the accepted clients' shared tensors, in client order (validated beforehand:
 * fed/validate_update.ts); noise is drawn in the global's tensor order, then index order.
 */
export function centralDpAggregate(
  global: ReadonlyMap<string, NamedTensor>,
  clients: readonly ReadonlyMap<string, NamedTensor>[],
  settings: Pick<DpSettings, "clip" | "noise">,
  expectedClients: number,
  noise: GaussianNoise,
): CentralDpResult {
  if (!(expectedClients > 0) || !Number.isFinite(expectedClients)) {
    throw new RangeError(`expected clients per round ${expectedClients} must be positive`);
  }
  const clipped = clients.map((tensors) => clipUpdate(updateOf(global, tensors), settings.clip));
  const std = settings.noise * settings.clip;
  const tensors = new Map<string, NamedTensor>();
  for (const [name, start] of global) {
    const sum = new Float64Array(start.data.length);
    for (const { update } of clipped) {
      const values = update.get(name)!;
      for (let i = 0; i < sum.length; i++) sum[i] += values[i];
    }
    const next = new Float32Array(sum.length);
    for (let i = 0; i < sum.length; i++) {
      next[i] = start.data[i] + (sum[i] + std * noise.next()) / expectedClients;
    }
    tensors.set(name, { shape: [...start.shape], data: next });
  }
  return { tensors, norms: clipped.map((c) => c.norm) };
}

/**
 * Local DP: what a client sends instead of its tensors: global + clip(local − global) + N(0, (zC)²),
 * rounded to float32 once. Noise is drawn in the global's tensor order, then index order.
 */
export function localDpTensors(
  global: ReadonlyMap<string, NamedTensor>,
  local: ReadonlyMap<string, NamedTensor>,
  settings: Pick<DpSettings, "clip" | "noise">,
  noise: GaussianNoise,
): { tensors: Map<string, NamedTensor>; norm: number } {
  const { update, norm } = clipUpdate(updateOf(global, local), settings.clip);
  const std = settings.noise * settings.clip;
  const tensors = new Map<string, NamedTensor>();
  for (const [name, start] of global) {
    const values = update.get(name)!;
    const sent = new Float32Array(values.length);
    for (let i = 0; i < sent.length; i++) {
      sent[i] = start.data[i] + (values[i] + std * noise.next());
    }
    tensors.set(name, { shape: [...start.shape], data: sent });
  }
  return { tensors, norm };
}

/**
 * The largest update norm an honest local-DP client sends: C plus the noise's norm, which for
 * n values is zC·χ_n, and χ_n ≤ √n + t except with probability e^{−t²/2} (Gaussian concentration
 * of a 1-Lipschitz function, E χ_n ≤ √n); t = 8 gives 1.3e-14. Update validation must use at
 * least this bound under local DP, or it refuses honest noised updates.
 */
export function localDpNormBound(
  settings: Pick<DpSettings, "clip" | "noise">,
  values: number,
): number {
  return settings.clip * (1 + settings.noise * (Math.sqrt(values) + 8));
}

/**
 * The privacy a run has spent after some rounds. Central: the mechanism ran once a round, on a
 * Poisson draw of rate q. Local: each client's own guarantee covers the rounds it trained in; the
 * run reports the largest (the client that trained most).
 */
export class PrivacySpent {
  readonly #accountant: RdpAccountant;

  constructor(
    readonly settings: DpSettings,
    samplingRate: number,
    readonly clients: number,
  ) {
    this.#accountant = dpAccountant(settings, samplingRate);
  }

  /** ε after `round` rounds; `drawn(r)` says which clients trained round r. */
  epsilonAfter(round: number, drawn: (round: number) => number[]): number {
    if (this.settings.mode === "central") return this.#accountant.epsilon(round).epsilon;
    const rounds = new Array<number>(this.clients).fill(0);
    for (let r = 1; r <= round; r++) for (const c of drawn(r)) rounds[c]++;
    return this.#accountant.epsilon(Math.max(...rounds)).epsilon;
  }
}
