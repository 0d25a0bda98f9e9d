// Cross-entropy of next-token logits, fused with its gradient:
//   loss_r = logsumexp(logits_r) − logits_r[target_r],   loss = (1/N)·Σ_r loss_r
//   dloss/dlogits_r = (softmax(logits_r) − onehot(target_r)) / N
// One workgroup per row keeps an online (max, Σexp) pair per invocation over vec4 loads, merges
// the 64 pairs with a fixed-order tree, then (when the logits need a gradient) makes a second
// pass over the row writing dlogits. The mean over rows is a second, single-workgroup reduction.
// Both are fixed-order, so the same inputs give the same bits.
//
// GPT-2's logits (1024 × 50257 f32 = 206 MB) exceed one storage binding (128 MiB here), so rows
// are processed in chunks, each bound through views whose byte offsets respect
// minStorageBufferOffsetAlignment; one dispatch per chunk.
//
// Backward: the saved dlogits are the gradient for a unit upstream; with an overwrite target they
// are copied (a buffer copy, no kernel). The copy could vanish only if the tape let an op hand
// its saved tensor over as the input's gradient buffer; the current Tape API has no such hook.
// Otherwise a kernel scales them by the upstream value and overwrites or accumulates.
import type { Binding } from "../engine/bindings.ts";
import type { Command, Engine } from "../engine/device.ts";
import { LimitError, ShapeError } from "../engine/errors.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { alignedChunks, roundDown, vec4Granule } from "./chunks.ts";
import { grid1d } from "./grid.ts";
import { declareKernel } from "./kernel.ts";
import { floatLiteral } from "./literals.ts";

const WORKGROUP = 64;
/** Bit pattern of a quiet NaN: the loss of a row whose target is out of range. */
const NAN_BITS = "0x7fc00000u";

export interface CrossEntropyOptions {
  /**
   * Rows per dispatch (a multiple of `rowQuantum(engine)`); by default as many as fit in one
   * storage binding. Small values force the chunked path in tests.
   */
  chunkRows?: number;
}

export interface CrossEntropyResult {
  /** [1]: the mean over rows; differentiable. */
  loss: Tensor;
  /** [N]: each row's loss (for sums of token losses in evaluation); carries no gradient. */
  rowLosses: Tensor;
}

/** Mean cross-entropy of `logits` [..., V] against `targets` (u32, one per row). */
export function crossEntropy(
  tape: Tape,
  logits: Tensor,
  targets: Tensor,
  opts: CrossEntropyOptions = {},
): Tensor {
  return crossEntropyWithRowLosses(tape, logits, targets, opts).loss;
}

/** Throws when a host-side target id is not below `vocabSize`. */
export function checkTargets(targets: ArrayLike<number>, vocabSize: number): void {
  for (let i = 0; i < targets.length; i++) {
    const t = targets[i];
    if (!Number.isInteger(t) || t < 0 || t >= vocabSize) {
      throw new ShapeError(
        `cross-entropy: target ${i} is ${t}, outside the vocabulary 0..${vocabSize - 1}`,
      );
    }
  }
}

/**
 * Rows per chunk must be a multiple of this, so every chunk's views of the logits and of the
 * per-row tensors (4 bytes a row) start at an aligned byte offset that is also vec4-aligned.
 */
export function rowQuantum(engine: Engine): number {
  return vec4Granule(engine.limits.minStorageBufferOffsetAlignment);
}

/** Cross-entropy that also returns the per-row losses. */
export function crossEntropyWithRowLosses(
  tape: Tape,
  logits: Tensor,
  targets: Tensor,
  opts: CrossEntropyOptions = {},
): CrossEntropyResult {
  const engine = tape.engine;
  const vocab = logits.shape[logits.shape.length - 1];
  const rows = logits.size / vocab;
  if (
    logits.shape.length < 2 || logits.dtype !== "f32" || targets.dtype !== "u32" ||
    targets.size !== rows
  ) {
    throw new ShapeError(
      `crossEntropy: logits ${logits} must be f32 [..., V] and targets ${targets} u32 with one ` +
        `id per row (${rows})`,
    );
  }
  const chunks = rowChunks(engine, rows, vocab, opts.chunkRows);
  const withGrad = logits.requiresGrad;
  const loss = tape.tensor([1], `cross_entropy(${logits.label})`);
  const rowLosses = tape.tensor([rows], `row losses(${logits.label})`);
  const dlogits = withGrad ? tape.tensor([rows, vocab], `dlogits(${logits.label})`) : null;

  const forward: Command[] = chunks.map(({ start, count }, c) => {
    const view = (t: Tensor, perRow: number) =>
      engine.view(t, start * perRow, [count * perRow], `${t.label} rows ${start}+${count}`);
    const logitsChunk = view(logits, vocab);
    const gradChunk = dlogits && view(dlogits, vocab);
    const tensors: Record<string, Tensor | null> = {
      logits4: logitsChunk,
      logits1: logitsChunk,
      targets: view(targets, 1),
      row_loss: view(rowLosses, 1),
      dlogits4: gradChunk,
      dlogits1: gradChunk,
    };
    const bindings = rowBindings(vocab, gradChunk !== null);
    const grid = rowGrid(engine, count);
    const kernel = declareKernel(
      engine,
      "cross_entropy_rows",
      bindings,
      rowKernelWgsl(vocab, count, rows, grid[0], bindings),
    );
    const resources = bindings.map(([name]) => tensors[name]!);
    return engine.dispatch(`cross_entropy rows chunk ${c}`, kernel, resources, grid);
  });
  const mean = declareKernel(engine, "cross_entropy_mean", [
    ["row_loss", "read", "array<f32>"],
    ["loss", "rw", "array<f32>"],
  ], meanWgsl(rows));
  forward.push(engine.dispatch("cross_entropy mean", mean, [rowLosses, loss], 1));

  tape.record({
    name: "cross_entropy",
    inputs: [logits],
    outputs: [loss],
    forward,
    backward: (ctx) => {
      const target = ctx.gradInput(0);
      if (!target) return [];
      if (!dlogits) throw new Error("cross_entropy: logits did not require grad when recorded");
      if (ctx.gradOutputIsUnit(0) && !target.accumulate) {
        return [{
          kind: "copy",
          label: "cross_entropy backward",
          src: dlogits,
          dst: target.tensor,
        }];
      }
      return chunks.map(({ start, count }, c) => {
        const n = count * vocab;
        const vec4 = n % 4 === 0;
        const grid = grid1d(vec4 ? n / 4 : n, WORKGROUP);
        const array = `array<${vec4 ? "vec4f" : "f32"}>`;
        const kernel = declareKernel(engine, "cross_entropy_backward", [
          ["dlogits", "read", array],
          ["upstream", "read", "array<f32>"],
          ["grad", "rw", array],
        ], scaleWgsl(vec4 ? n / 4 : n, grid.index, target.accumulate));
        const view = (t: Tensor) => engine.view(t, start * vocab, [n], `${t.label} chunk ${c}`);
        return engine.dispatch(
          `cross_entropy backward chunk ${c}`,
          kernel,
          [view(dlogits), ctx.gradOutput(0), view(target.tensor)],
          grid.workgroups,
        );
      });
    },
  });
  return { loss, rowLosses };
}

/** Row chunks of `chunkRows` (default: as many as fit in one storage binding). */
function rowChunks(
  engine: Engine,
  rows: number,
  vocab: number,
  requested?: number,
): { start: number; count: number }[] {
  const quantum = rowQuantum(engine);
  const fit = Math.floor(engine.limits.maxStorageBufferBindingSize / (vocab * 4));
  const chunkRows = requested ?? roundDown(fit, quantum);
  if (requested === undefined && chunkRows < quantum) {
    throw new LimitError(
      `crossEntropy: ${quantum} rows of ${vocab} logits exceed one storage binding`,
    );
  }
  if (!Number.isInteger(chunkRows) || chunkRows < quantum || chunkRows % quantum !== 0) {
    throw new ShapeError(`crossEntropy: chunkRows ${requested} must be a multiple of ${quantum}`);
  }
  return alignedChunks(rows, chunkRows, quantum, "crossEntropy")
    .map(([start, end]) => ({ start, count: end - start }));
}

/** One workgroup per row, over a 2-D grid when rows exceed the per-dimension limit. */
function rowGrid(engine: Engine, rows: number): [number, number] {
  const x = Math.min(rows, engine.limits.maxComputeWorkgroupsPerDimension);
  return [x, Math.ceil(rows / x)];
}

/** Merges (max, Σexp) pairs: both sums rescaled to the larger max. */
const online = `
const MOST_NEGATIVE = -3.4028234e38;
fn merged_sum(m_a: f32, s_a: f32, m_b: f32, s_b: f32, m: f32) -> f32 {
  return s_a * exp(m_a - m) + s_b * exp(m_b - m);
}`;

/**
 * The row kernel's buffers. When V is not a multiple of 4, a row starts mid-vec4: up to 3 head
 * and 3 tail elements go through a scalar alias of the logits, the aligned body through vec4
 * loads (absent when V < 4: a binding must hold one whole vec4). dlogits is bound once, scalar
 * then: WebGPU forbids two writable bindings of one buffer in a dispatch (Chromium refuses it).
 */
function rowBindings(vocab: number, withGrad: boolean): Binding[] {
  const body = vocab >= 4, edges = vocab % 4 !== 0;
  const all: (Binding | false)[] = [
    body && ["logits4", "read", "array<vec4f>"],
    edges && ["logits1", "read", "array<f32>"],
    ["targets", "read", "array<u32>"],
    ["row_loss", "rw", "array<f32>"],
    withGrad && body && !edges && ["dlogits4", "rw", "array<vec4f>"],
    withGrad && edges && ["dlogits1", "rw", "array<f32>"],
  ];
  return all.filter((b) => b !== false);
}

/** Per-row loss (and dlogits) for the `chunkRows` rows of a chunk; `totalRows` is the mean's N. */
function rowKernelWgsl(
  vocab: number,
  chunkRows: number,
  totalRows: number,
  gridX: number,
  bindings: readonly Binding[],
): string {
  const has = (name: string) => bindings.some(([bound]) => bound === name);
  const edges = has("logits1");
  // Scalar elements of the row: the head (before the first aligned vec4) and the tail.
  const scalarEdges = (body: string) =>
    edges
      ? `
  if (t < head) { let i = start + t; ${body} }
  if (t < tail) { let i = tail_start + t; ${body} }`
      : "";
  const bodyLoop = (body: string) =>
    has("logits4")
      ? `
  for (var q = run_start; q < run_end; q++) {${body}
  }`
      : "";
  return `${online}
const V = ${vocab}u;
const ROWS = ${chunkRows}u;
const INV_N = ${floatLiteral(1 / totalRows)};
var<workgroup> part_max: array<f32, ${WORKGROUP}>;
var<workgroup> part_sum: array<f32, ${WORKGROUP}>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) t: u32) {
  let row = wid.x + wid.y * ${gridX}u;
  if (row >= ROWS) { return; }
  let start = row * V;
  let head = ${edges ? "min((4u - start % 4u) % 4u, V)" : "0u"};
  let body = (V - head) / 4u;
  let body_start = (start + head) / 4u;
  let tail_start = start + head + 4u * body;
  let tail = V - head - 4u * body;
  // Each invocation takes a contiguous run of the body's vec4s: on lavapipe this reads ~3×
  // faster than interleaving the invocations vec4 by vec4.
  let run = (body + ${WORKGROUP - 1}u) / ${WORKGROUP}u;
  let run_start = min(t * run, body);
  let run_end = min(run_start + run, body);

  // Pass 1: this invocation's running max m and Σ exp(x − m).
  var m = MOST_NEGATIVE;
  var s = 0.0;${
    bodyLoop(`
    let x = logits4[body_start + q];
    let m_new = max(m, max(max(x.x, x.y), max(x.z, x.w)));
    s = s * exp(m - m_new) + dot(exp(x - m_new), vec4f(1.0));
    m = m_new;`)
  }${
    scalarEdges(`let x = logits1[i]; let m_new = max(m, x);
    s = s * exp(m - m_new) + exp(x - m_new); m = m_new;`)
  }

  // Fixed-order tree over the workgroup.
  part_max[t] = m;
  part_sum[t] = s;
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (t < stride) {
      let m_a = part_max[t];
      let m_b = part_max[t + stride];
      let m_ab = max(m_a, m_b);
      part_sum[t] = merged_sum(m_a, part_sum[t], m_b, part_sum[t + stride], m_ab);
      part_max[t] = m_ab;
    }
  }
  workgroupBarrier();
  let row_max = part_max[0];
  let row_sum = part_sum[0];
  let label = targets[row];
  if (t == 0u) {
    // An out-of-range target reads a clamped element and reports NaN (built at run time: a
    // constant NaN is a shader-creation error in WGSL).
    let i = start + min(label, V - 1u);
    let target_logit = ${edges ? "logits1[i]" : "logits4[i / 4u][i % 4u]"};
    let loss = row_max + log(row_sum) - target_logit;
    var nan_bits = ${NAN_BITS};
    row_loss[row] = select(bitcast<f32>(nan_bits), loss, label < V);
  }${
    has("dlogits1") || has("dlogits4")
      ? `

  // Pass 2: dlogits = (softmax − onehot) / N over the same elements.
  let inv_sum = 1.0 / row_sum;${
        bodyLoop(`
    let col = vec4u(head + 4u * q) + vec4u(0u, 1u, 2u, 3u);
    let onehot = select(vec4f(0.0), vec4f(1.0), col == vec4u(label));
    let p = exp(logits4[body_start + q] - row_max) * inv_sum;${
          has("dlogits4")
            ? `
    dlogits4[body_start + q] = (p - onehot) * INV_N;`
            : `
    let d = (p - onehot) * INV_N;
    let at = 4u * (body_start + q);
    dlogits1[at] = d.x; dlogits1[at + 1u] = d.y; dlogits1[at + 2u] = d.z; dlogits1[at + 3u] = d.w;`
        }`)
      }${
        scalarEdges(`let onehot = select(0.0, 1.0, i - start == label);
    dlogits1[i] = (exp(logits1[i] - row_max) * inv_sum - onehot) * INV_N;`)
      }`
      : ""
  }
}`;
}

/** loss = (1/N)·Σ row_loss, summed in a fixed order by one workgroup. */
function meanWgsl(rows: number): string {
  return `
var<workgroup> partial: array<f32, ${WORKGROUP}>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_index) t: u32) {
  var s = 0.0;
  for (var i = t; i < ${rows}u; i += ${WORKGROUP}u) { s += row_loss[i]; }
  partial[t] = s;
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (t < stride) { partial[t] += partial[t + stride]; }
  }
  if (t == 0u) { loss[0] = partial[0] * ${floatLiteral(1 / rows)}; }
}`;
}

/** grad (+)= upstream[0] · dlogits, elementwise over n vec4s (or n scalars). */
function scaleWgsl(n: number, index: string, accumulate: boolean): string {
  return `
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${n}u) { return; }
  grad[i] = ${accumulate ? "grad[i] + " : ""}upstream[0] * dlogits[i];
}`;
}
