// Float64 reference for one AdamW step, following torch.optim.AdamW (1.13, single tensor):
//   param.mul_(1 - lr * weight_decay)
//   exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
//   denom = (exp_avg_sq.sqrt() / sqrt(1 - beta2 ** step)).add_(eps)
//   param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1 ** step))
import type { AdamWHyper } from "../../kernels/adamw.ts";

export interface AdamWStateRef {
  p: Float64Array;
  m: Float64Array;
  v: Float64Array;
}

/** Applies step t (1-based) in place. */
export function adamwStepRef(
  state: AdamWStateRef,
  g: ArrayLike<number>,
  t: number,
  h: AdamWHyper,
): void {
  const { p, m, v } = state;
  const biasCorrection1 = 1 - h.beta1 ** t;
  const biasCorrection2 = 1 - h.beta2 ** t;
  for (let i = 0; i < p.length; i++) {
    p[i] *= 1 - h.lr * h.weightDecay;
    m[i] = h.beta1 * m[i] + (1 - h.beta1) * g[i];
    v[i] = h.beta2 * v[i] + (1 - h.beta2) * g[i] * g[i];
    const mHat = m[i] / biasCorrection1;
    const vHat = v[i] / biasCorrection2;
    p[i] -= h.lr * mHat / (Math.sqrt(vHat) + h.eps);
  }
}
