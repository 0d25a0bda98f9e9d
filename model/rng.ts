// Mulberry32: the one seeded PRNG of the project (weight init, training batches, sampling,
// scenario shuffles, tests). Its state is a public 32-bit integer, so a checkpoint can save it
// and continue the very same sequence.
export class Mulberry32 {
  constructor(public state: number) {
    this.state = state >>> 0;
  }

  /** The next output as an integer in [0, 2³²). */
  nextUint32(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextUint32() / 4294967296;
  }
}

/**
 * A 32-bit PRNG seed for one purpose (weights, batches, a draw) of one client (or round), from
 * a run's seed: distinct streams that all follow from the one seed.
 */
export function mix(seed: number, client: number, purpose: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const v of [client, purpose]) {
    h = Math.imul(h ^ (v + 0x7f4a7c15), 0x85ebca6b) >>> 0;
    h = (h ^ (h >>> 13)) >>> 0;
  }
  return h;
}
