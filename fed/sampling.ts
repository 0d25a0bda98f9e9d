// Which clients take part in a round (--clients-per-round K): drawn from a seed and the round
// number alone, so a resumed run redraws exactly the rounds it had drawn, and the draw of a round
// never depends on what happened before it. Client ids are 0..N−1; a draw lists its ids in
// increasing order.
import { mix, Mulberry32 } from "../model/rng.ts";
import { CLIENT_DRAW_STREAM, secretUniforms, UNIFORMS_PER_BLOCK } from "./noise.ts";

/** mix()'s purpose number of the draw (clients use 0–2 for their weights and streams). */
const FIXED_DRAW = 3;

function checkRound(round: number, clients: number): void {
  if (!Number.isSafeInteger(round) || round < 0) throw new RangeError(`round ${round}`);
  if (!Number.isSafeInteger(clients) || clients < 1) {
    throw new RangeError(`a federation needs at least 1 client, not ${clients}`);
  }
}

/**
 * K of the N clients, uniformly without replacement (a partial Fisher–Yates shuffle), for
 * `round`; K = N is every client.
 */
export function sampleClients(seed: number, round: number, clients: number, k: number): number[] {
  checkRound(round, clients);
  if (!Number.isSafeInteger(k) || k < 1 || k > clients) {
    throw new RangeError(`--clients-per-round ${k}: choose 1..${clients} (the number of clients)`);
  }
  const random = new Mulberry32(mix(seed, round, FIXED_DRAW));
  const ids = Array.from({ length: clients }, (_, i) => i);
  for (let i = 0; i < k; i++) {
    const j = i + Math.floor(random.next() * (clients - i));
    [ids[i], ids[j]] = [ids[j], ids[i]];
  }
  return ids.slice(0, k).sort((a, b) => a - b);
}

/**
 * Each client independently with probability `rate` (Poisson sampling), for `round`: the draw
 * the privacy accountant analyses (fed/accountant.ts), so DP with K < N uses it with rate K/N.
 * Amplification by sampling holds only against someone who cannot tell who was drawn, so the
 * draw comes from the DP run's secret key (fed/noise.ts; its own stream, apart from the noise's),
 * not from the public seed. The number drawn varies (0 included); its mean is rate·N.
 */
export function poissonSampleClients(
  key: string,
  round: number,
  clients: number,
  rate: number,
): number[] {
  checkRound(round, clients);
  if (!(rate > 0 && rate <= 1)) throw new RangeError(`sampling rate ${rate} is not in (0, 1]`);
  const blocksPerRound = Math.ceil(clients / UNIFORMS_PER_BLOCK);
  const drawn: number[] = [];
  for (let block = 0; block < blocksPerRound; block++) {
    const uniforms = secretUniforms(key, CLIENT_DRAW_STREAM, round * blocksPerRound + block);
    for (let u = 0; u < UNIFORMS_PER_BLOCK; u++) {
      const id = block * UNIFORMS_PER_BLOCK + u;
      if (id < clients && uniforms[u] < rate) drawn.push(id);
    }
  }
  return drawn;
}
