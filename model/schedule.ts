// The learning-rate schedule of every training loop (pretraining and the clients' expert steps):
// a cosine from the peak down to a tenth of it. Pretraining warms up linearly before it.

/** Where the cosine ends, as a fraction of the peak learning rate. */
export const FINAL_LR_FRACTION = 0.1;

/** The learning rate at `progress` ∈ [0, 1] along the cosine from `peak` to a tenth of it. */
export function cosineLr(peak: number, progress: number): number {
  return peak *
    (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + Math.cos(Math.PI * progress)));
}
