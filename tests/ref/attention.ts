// Float64 reference for causal multi-head self-attention on qkv [B, T, 3C] (GPT-2's layout:
// q, k, v are the three C-wide thirds; head h uses columns h·hs .. (h+1)·hs of each), written
// the plain way: the full probability matrix of each (sequence, head), then its products.
// Grouped-query attention (Llama, Qwen2) reuses it as Hugging Face computes it: keys and values
// repeated per query head (repeat_kv), their gradients summed back over the copies.

export interface AttentionShape {
  B: number;
  T: number;
  C: number;
  nHead: number;
}

/** One (sequence, head): its q, k, v (and, for backward, dout) rows as contiguous [T, hs]. */
interface Head {
  q: Float64Array;
  k: Float64Array;
  v: Float64Array;
  /** Element (t, d) of the head's slice of a row-major tensor with `width` columns. */
  index: (t: number, d: number, width: number, column: number) => number;
}

function slice(qkv: ArrayLike<number>, s: AttentionShape, b: number, h: number): Head {
  const { T, C } = s;
  const hs = C / s.nHead;
  const index = (t: number, d: number, width: number, column: number) =>
    (b * T + t) * width + column + h * hs + d;
  const part = (p: number) => {
    const out = new Float64Array(T * hs);
    for (let t = 0; t < T; t++) {
      for (let d = 0; d < hs; d++) out[t * hs + d] = qkv[index(t, d, 3 * C, p * C)];
    }
    return out;
  };
  return { q: part(0), k: part(1), v: part(2), index };
}

/** P[i][j] = softmax over keys j ≤ i of q_i·k_j/√hs (zero above the diagonal). */
function probabilities(head: Head, T: number, hs: number): Float64Array {
  const { q, k } = head;
  const scale = 1 / Math.sqrt(hs);
  const p = new Float64Array(T * T);
  for (let i = 0; i < T; i++) {
    let max = -Infinity;
    for (let j = 0; j <= i; j++) {
      let dot = 0;
      for (let d = 0; d < hs; d++) dot += q[i * hs + d] * k[j * hs + d];
      p[i * T + j] = dot * scale;
      max = Math.max(max, dot * scale);
    }
    let sum = 0;
    for (let j = 0; j <= i; j++) sum += p[i * T + j] = Math.exp(p[i * T + j] - max);
    for (let j = 0; j <= i; j++) p[i * T + j] /= sum;
  }
  return p;
}

/** out [B, T, C]: per head P·v, heads side by side. */
export function attentionRef(qkv: ArrayLike<number>, s: AttentionShape): Float64Array {
  const { B, T, C, nHead } = s;
  const hs = C / nHead;
  const out = new Float64Array(B * T * C);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < nHead; h++) {
      const head = slice(qkv, s, b, h);
      const p = probabilities(head, T, hs);
      const row = new Float64Array(hs);
      for (let i = 0; i < T; i++) {
        row.fill(0);
        for (let j = 0; j <= i; j++) {
          for (let d = 0; d < hs; d++) row[d] += p[i * T + j] * head.v[j * hs + d];
        }
        for (let d = 0; d < hs; d++) out[head.index(i, d, C, 0)] = row[d];
      }
    }
  }
  return out;
}

/**
 * dqkv [B, T, 3C] for upstream dout [B, T, C]: dv = Pᵀ·dO, dP = dO·vᵀ,
 * dS = P ⊙ (dP − rowsum(P ⊙ dP)), dq = dS·k/√hs, dk = dSᵀ·q/√hs.
 */
export function attentionBackwardRef(
  qkv: ArrayLike<number>,
  dout: ArrayLike<number>,
  s: AttentionShape,
): Float64Array {
  const { B, T, C, nHead } = s;
  const hs = C / nHead;
  const scale = 1 / Math.sqrt(hs);
  const dqkv = new Float64Array(B * T * 3 * C);
  const dp = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < nHead; h++) {
      const head = slice(qkv, s, b, h);
      const { q, k, v } = head;
      const p = probabilities(head, T, hs);
      const g = new Float64Array(T * hs);
      for (let t = 0; t < T; t++) {
        for (let d = 0; d < hs; d++) g[t * hs + d] = dout[head.index(t, d, C, 0)];
      }
      const dq = new Float64Array(T * hs), dk = new Float64Array(T * hs);
      const dv = new Float64Array(T * hs);
      for (let i = 0; i < T; i++) {
        let rowSum = 0;
        for (let j = 0; j <= i; j++) {
          let sum = 0;
          for (let d = 0; d < hs; d++) sum += g[i * hs + d] * v[j * hs + d];
          dp[j] = sum;
          rowSum += p[i * T + j] * sum;
        }
        for (let j = 0; j <= i; j++) {
          const pij = p[i * T + j];
          const ds = pij * (dp[j] - rowSum) * scale;
          for (let d = 0; d < hs; d++) {
            dq[i * hs + d] += ds * k[j * hs + d];
            dk[j * hs + d] += ds * q[i * hs + d];
            dv[j * hs + d] += pij * g[i * hs + d];
          }
        }
      }
      for (let t = 0; t < T; t++) {
        for (let d = 0; d < hs; d++) {
          dqkv[head.index(t, d, 3 * C, 0)] = dq[t * hs + d];
          dqkv[head.index(t, d, 3 * C, C)] = dk[t * hs + d];
          dqkv[head.index(t, d, 3 * C, 2 * C)] = dv[t * hs + d];
        }
      }
    }
  }
  return dqkv;
}

/** Grouped-query attention: H query heads of size D, KV key/value heads (KV divides H). */
export interface GroupedAttentionShape {
  B: number;
  T: number;
  heads: number;
  kvHeads: number;
  D: number;
}

/**
 * q [B, T, H·D], k and v [B, T, KV·D] → GPT-2's qkv [B, T, 3·H·D] with each key/value head
 * repeated for its H/KV query heads, as Hugging Face's repeat_kv does (query head h uses
 * key/value head h div (H/KV)).
 */
function repeatKv(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  s: GroupedAttentionShape,
): Float64Array {
  const { B, T, heads, kvHeads, D } = s;
  const C = heads * D, group = heads / kvHeads;
  const qkv = new Float64Array(B * T * 3 * C);
  for (let row = 0; row < B * T; row++) {
    for (let h = 0; h < heads; h++) {
      const kv = Math.floor(h / group);
      for (let d = 0; d < D; d++) {
        qkv[row * 3 * C + h * D + d] = q[row * C + h * D + d];
        qkv[row * 3 * C + C + h * D + d] = k[(row * kvHeads + kv) * D + d];
        qkv[row * 3 * C + 2 * C + h * D + d] = v[(row * kvHeads + kv) * D + d];
      }
    }
  }
  return qkv;
}

/** out [B, T, H·D]: multi-head attention over the repeated keys and values. */
export function groupedAttentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  s: GroupedAttentionShape,
): Float64Array {
  const { B, T, heads, D } = s;
  return attentionRef(repeatKv(q, k, v, s), { B, T, C: heads * D, nHead: heads });
}

export interface GroupedAttentionGrads {
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
}

/**
 * dq, dk, dv for upstream dout [B, T, H·D]: the multi-head gradients of the repeated operands,
 * each key/value head's summed over its copies (the transpose of repeat_kv).
 */
export function groupedAttentionBackwardRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  dout: ArrayLike<number>,
  s: GroupedAttentionShape,
): GroupedAttentionGrads {
  const { B, T, heads, kvHeads, D } = s;
  const C = heads * D, group = heads / kvHeads;
  const dqkv = attentionBackwardRef(repeatKv(q, k, v, s), dout, { B, T, C, nHead: heads });
  const dq = new Float64Array(B * T * C);
  const dk = new Float64Array(B * T * kvHeads * D), dv = new Float64Array(dk.length);
  for (let row = 0; row < B * T; row++) {
    for (let h = 0; h < heads; h++) {
      const kv = Math.floor(h / group);
      for (let d = 0; d < D; d++) {
        dq[row * C + h * D + d] = dqkv[row * 3 * C + h * D + d];
        dk[(row * kvHeads + kv) * D + d] += dqkv[row * 3 * C + C + h * D + d];
        dv[(row * kvHeads + kv) * D + d] += dqkv[row * 3 * C + 2 * C + h * D + d];
      }
    }
  }
  return { dq, dk, dv };
}
