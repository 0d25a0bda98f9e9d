// The server's check of one client's result before it may enter an aggregate: the right sender
// and round, exactly the shared tensors the server sent (a specialist's, a router's or an unknown
// name is refused), their exact shapes in float32, every value finite, a plausible token claim,
// and an update (client tensor minus the global it started from, over all shared tensors
// together) no larger than an honest client can produce. A refused result is left out of the
// round with a one-line reason; one bad participant never stops the run.
import { adapterRole, isAdapterName } from "../model/adapters.ts";
import type { NamedTensor } from "../model/safetensors.ts";
import { decodeMessage, type Message } from "./message.ts";
import { l2Norm, updateOf } from "./update.ts";

export interface UpdateExpectation {
  round: number;
  /** The client this result must come from: the authenticated session's. */
  client: number;
  /** The shared tensors' names and shapes: exactly these must come back. */
  shapes: ReadonlyMap<string, readonly number[]>;
  /** The global the client started from; null when there is none to measure against (PCL). */
  global: ReadonlyMap<string, NamedTensor> | null;
  /** The largest accepted L2 norm of the update (see defaultMaxUpdateNorm). */
  maxUpdateNorm: number;
}

export type UpdateVerdict =
  | {
    accepted: true;
    message: Message; /** The update's norm (null without a global). */
    norm: number | null;
  }
  | { accepted: false; refusal: Refusal };

/** A refused result, as metrics.jsonl records it. */
export interface Refusal {
  round: number;
  client: number;
  /** What was wrong, e.g. "h.0.attn.c_attn.lora_A[17] is NaN". */
  problem: string;
  /** One line naming client, round and problem. */
  reason: string;
}

/**
 * Every AdamW step moves each coordinate by lr_t·(|m̂/(√v̂+ε)| + wd·|θ|) with lr_t ≤ lr (the
 * expert lr decays from --lr, fed/client.ts). By Cauchy–Schwarz over the moment sums,
 * |m̂_t|/√v̂_t ≤ (1−β1)/√((1−β2)(1−β1²/β2)) for every gradient sequence and step t, and the bound
 * is approached by gradients growing like (β1/β2)^−k: 1.165 for betas (0.9, 0.95) (method.md §3;
 * tests/fed/validate_update_test.ts checks it against the float64 AdamW reference). With weight
 * decay 0.01, twice lr per coordinate and step covers |θ| ≤ 83, far above any LoRA value (A starts
 * within 1/√in ≤ 0.09, B at 0, and neither can move more than 1.17·lr per step).
 */
export const ADAM_STEP_BOUND = 2;

/**
 * The default --max-update-norm: the largest update an honest client can send after `localSteps`
 * AdamW steps of learning rate ≤ `lr` on `values` shared values, 2·lr·T·√n (each coordinate moves
 * at most 2·lr per step). Shipped defaults (lr 2e-3, T = 10, 1G1S on the base model: 65,536
 * shared values): 10.24, against 6.5 for the norm of the initial global itself. Measured: the
 * first-round updates of a default topics run (comigs-2s, whose generalist and attention LoRA
 * train as 1G1S's do) have norms 1.78–1.85, the largest coordinate moving 0.0195 ≈ lr·T.
 */
export function defaultMaxUpdateNorm(lr: number, localSteps: number, values: number): number {
  return ADAM_STEP_BOUND * lr * localSteps * Math.sqrt(values);
}

/** Why an unexpected name is refused. */
function unexpected(name: string): string {
  if (!isAdapterName(name)) return `sent "${name}", which is not an adapter tensor`;
  const role = adapterRole(name);
  if (role === "router") return `sent ${name}, a router (routers never leave the device)`;
  if (role === "specialist") {
    return `sent ${name}, a specialist's tensor (specialists never leave the device)`;
  }
  return `sent ${name}, which the server did not send this round`;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** The names and shapes of `tensors`, as an expectation's `shapes`. */
export function shapesOf(tensors: ReadonlyMap<string, NamedTensor>): Map<string, number[]> {
  return new Map([...tensors].map(([name, t]) => [name, [...t.shape]]));
}

/** What is wrong with a decoded message, or the norm of its (acceptable) update. */
function inspect(
  message: Message,
  expect: UpdateExpectation,
): { problem: string } | { norm: number | null } {
  const fail = (problem: string) => ({ problem });
  if (message.sender !== expect.client) {
    return fail(
      `the message says it is from ${
        message.sender === "server" ? "the server" : `client ${message.sender}`
      }`,
    );
  }
  if (message.round !== expect.round) {
    return fail(
      `it answers round ${message.round}${message.round < expect.round ? " (stale)" : ""}`,
    );
  }
  if (!Number.isSafeInteger(message.trainTokens) || message.trainTokens < 0) {
    return fail(`it claims ${message.trainTokens} training tokens, not a count below 2^53`);
  }
  for (const name of message.tensors.keys()) {
    if (!expect.shapes.has(name)) return fail(unexpected(name));
  }
  const missing = [...expect.shapes.keys()].filter((name) => !message.tensors.has(name));
  if (missing.length > 0) {
    const more = missing.length > 1 ? ` (and ${missing.length - 1} more)` : "";
    return fail(`it lacks ${missing[0]}${more} of the ${expect.shapes.size} shared tensors`);
  }
  for (const [name, shape] of expect.shapes) {
    const t = message.tensors.get(name)!;
    if (!sameShape(t.shape, shape)) return fail(`${name} is [${t.shape}], expected [${shape}]`);
    if (!(t.data instanceof Float32Array)) return fail(`${name} is not float32`);
    const count = shape.reduce((a, b) => a * b, 1);
    if (t.data.length !== count) {
      return fail(`${name} holds ${t.data.length} values for shape [${shape}]`);
    }
  }
  for (const name of expect.shapes.keys()) {
    const data = message.tensors.get(name)!.data;
    let bad = -1, count = 0;
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i])) {
        if (bad < 0) bad = i;
        count++;
      }
    }
    if (bad >= 0) {
      const more = count > 1 ? ` (and ${count - 1} more non-finite values)` : "";
      return fail(`${name}[${bad}] is ${data[bad]}${more}`);
    }
  }
  if (!expect.global) return { norm: null };
  const norm = l2Norm(updateOf(expect.global, message.tensors));
  if (!(norm <= expect.maxUpdateNorm)) {
    return fail(
      `its update's L2 norm ${norm.toPrecision(4)} exceeds the bound ` +
        `${expect.maxUpdateNorm.toPrecision(4)} (max update norm)`,
    );
  }
  return { norm };
}

function refuse(expect: UpdateExpectation, problem: string): UpdateVerdict {
  const reason = `client ${expect.client}, round ${expect.round}: update refused: ${problem}`;
  return {
    accepted: false,
    refusal: { round: expect.round, client: expect.client, problem, reason },
  };
}

/** Checks a message already decoded (the in-process simulation's path). */
export function validateMessage(message: Message, expect: UpdateExpectation): UpdateVerdict {
  const found = inspect(message, expect);
  return "problem" in found
    ? refuse(expect, found.problem)
    : { accepted: true, message, norm: found.norm };
}

/**
 * Checks a client's encoded result (the server's path): bytes that cannot be read (truncated,
 * malformed, a non-finite value) or tensors stored as anything but F32 are refused before the
 * message itself is checked.
 */
export function validateUpdate(bytes: Uint8Array, expect: UpdateExpectation): UpdateVerdict {
  let message: Message;
  try {
    message = decodeMessage(bytes, `client ${expect.client}'s result`);
  } catch (e) {
    return refuse(expect, `the message cannot be read (${(e as Error).message})`);
  }
  for (const [name, dtype] of storedDtypes(bytes)) {
    if (dtype !== "F32") {
      return refuse(expect, `${name} is stored as ${dtype}; only F32 is accepted`);
    }
  }
  return validateMessage(message, expect);
}

/** Each tensor's dtype in a safetensors header that decodeMessage has already accepted. */
function storedDtypes(bytes: Uint8Array): Map<string, string> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const dtypes = new Map<string, string>();
  for (const [name, entry] of Object.entries(header as Record<string, { dtype?: string }>)) {
    if (name !== "__metadata__") dtypes.set(name, String(entry.dtype));
  }
  return dtypes;
}
