// Update validation: an honest result is accepted with its update's norm (against a float64
// reference); every kind of bad result (wrong sender, stale round, implausible token claim,
// specialist / router / unknown / unsent name, missing name, wrong shape, non-float32 data, NaN,
// Inf, an update too large, unreadable bytes, F16 storage) is refused with one line naming the
// client, the round and the problem. The default bound is checked against AdamW itself.
import { TRAIN_DEFAULTS as DEFAULTS } from "../../fed/options.ts";
import { encodeMessage, type Message } from "../../fed/message.ts";
import { isShared, METHOD_SPECS, type MethodSpec } from "../../fed/methods.ts";
import {
  ADAM_STEP_BOUND,
  defaultMaxUpdateNorm,
  shapesOf,
  type UpdateExpectation,
  validateMessage,
  validateUpdate,
} from "../../fed/validate_update.ts";
import { adapterRole, adapterShapes } from "../../model/adapters.ts";
import type { GPT2Config } from "../../model/config.ts";
import type { NamedTensor } from "../../model/safetensors.ts";
import { serializeSafetensors } from "../../model/safetensors.ts";
import { assert, assertEquals } from "../assert.ts";
import { adamwStepRef } from "../ref/adamw.ts";
import { Rng } from "../util.ts";

/** A 2-block model of awkward width; the second block holds 3 experts. */
const BASE: GPT2Config = {
  n_layer: 2,
  n_head: 2,
  n_embd: 12,
  vocab_size: 50,
  n_positions: 16,
  layer_norm_epsilon: 1e-5,
};
const LORA = { rank: 3, alpha: 6, scaling: "rslora" as const, topK: 2, lbCoef: 0, lbRho: 0.5 };

/** Every adapter tensor of one client, random. */
function allTensors(seed: number): Map<string, NamedTensor> {
  const rng = new Rng(seed);
  const shapes = adapterShapes(BASE, { ...LORA, experts: [2, 3] });
  return new Map(
    [...shapes].map(([name, shape]) => [name, {
      shape,
      data: Float32Array.from(rng.uniform(shape[0] * shape[1], -0.1, 0.1)),
    }]),
  );
}

function shared(tensors: Map<string, NamedTensor>, spec: MethodSpec) {
  return new Map([...tensors].filter(([name]) => isShared(spec, adapterRole(name))));
}

const GLOBAL = shared(allTensors(1), METHOD_SPECS["comigs-1g1s"]);

function expectation(overrides: Partial<UpdateExpectation> = {}): UpdateExpectation {
  return {
    round: 5,
    client: 2,
    shapes: shapesOf(GLOBAL),
    global: GLOBAL,
    maxUpdateNorm: 1,
    ...overrides,
  };
}

/** The global moved by `step` (uniform in ±step) in every coordinate. */
function honest(step: number, seed = 3): Message {
  const rng = new Rng(seed);
  const tensors = new Map([...GLOBAL].map(([name, t]) => {
    const move = rng.uniform(t.data.length, -step, step);
    return [name, { shape: t.shape, data: t.data.map((x, i) => x + move[i]) }];
  }));
  return { round: 5, sender: 2, trainTokens: 4096, tensors };
}

/** `message` with tensor `name` replaced (or added) by `data` of `shape`. */
function withTensor(message: Message, name: string, shape: number[], data: Float32Array): Message {
  const tensors = new Map(message.tensors);
  tensors.set(name, { shape, data });
  return { ...message, tensors };
}

function refusal(message: Message, expect = expectation()): string {
  const verdict = validateMessage(message, expect);
  assert(!verdict.accepted, "a bad update was accepted");
  return verdict.refusal.reason;
}

Deno.test("validate: an honest update is accepted with its float64 norm", () => {
  const message = honest(1e-3);
  const verdict = validateMessage(message, expectation());
  assert(verdict.accepted);
  let squares = 0;
  for (const [name, t] of GLOBAL) {
    const mine = message.tensors.get(name)!.data;
    t.data.forEach((x, i) => squares += (mine[i] - x) ** 2);
  }
  // Both sums run over the same float64 terms; only their order may differ.
  assert(Math.abs(verdict.norm! - Math.sqrt(squares)) <= 1e-14 * Math.sqrt(squares));
  assert(verdict.norm! > 0.01 && verdict.norm! < 1);
  // The same through the bytes a networked client sends.
  assert(validateUpdate(encodeMessage(message), expectation()).accepted);
  // PCL: no global to measure against, so no norm bound.
  const pcl = validateMessage(honest(10), expectation({ global: null }));
  assert(pcl.accepted && pcl.norm === null);
});

Deno.test("validate: the norm bound is inclusive and refuses just above it", () => {
  const norm = (validateMessage(honest(1e-3), expectation()) as { norm: number }).norm;
  assert(validateMessage(honest(1e-3), expectation({ maxUpdateNorm: norm })).accepted);
  assertEquals(
    refusal(honest(1e-3), expectation({ maxUpdateNorm: norm * (1 - 1e-12) })),
    `client 2, round 5: update refused: its update's L2 norm ${norm.toPrecision(4)} exceeds ` +
      `the bound ${(norm * (1 - 1e-12)).toPrecision(4)} (max update norm)`,
  );
});

Deno.test("validate: every kind of bad result is refused with client, round and problem", () => {
  const good = honest(1e-3);
  const [firstName, first] = [...GLOBAL][0];
  const nan = first.data.slice();
  nan[7] = NaN;
  nan[9] = NaN;
  const inf = first.data.slice();
  inf[4] = -Infinity;
  const huge = new Map(
    [...good.tensors].map(([n, t]) => [n, { ...t, data: t.data.map((x) => x + 1e6) }]),
  );
  const lacking = new Map(good.tensors);
  lacking.delete("h.1.attn.c_proj.lora_B");
  lacking.delete("h.0.mlp.experts.0.c_fc.lora_A");
  const cases: [Message, string][] = [
    [{ ...good, sender: 1 }, "the message says it is from client 1"],
    [{ ...good, sender: "server" }, "the message says it is from the server"],
    [{ ...good, round: 4 }, "it answers round 4 (stale)"],
    [{ ...good, round: 6 }, "it answers round 6"],
    [{ ...good, trainTokens: 1e300 }, "it claims 1e+300 training tokens, not a count below 2^53"],
    [
      withTensor(good, "h.1.mlp.experts.2.c_fc.lora_A", [3, 12], new Float32Array(36)),
      "sent h.1.mlp.experts.2.c_fc.lora_A, a specialist's tensor (specialists never leave the " +
      "device)",
    ],
    [
      withTensor(good, "h.0.mlp.router.weight", [2, 12], new Float32Array(24)),
      "sent h.0.mlp.router.weight, a router (routers never leave the device)",
    ],
    [
      withTensor(good, "lm_head.weight", [1], new Float32Array(1)),
      'sent "lm_head.weight", which is not an adapter tensor',
    ],
    [
      // Against a GPT-2 run a Llama-family specialist's name is still named for what it is.
      withTensor(
        good,
        "model.layers.0.mlp.experts.1.up_proj.lora_B",
        [48, 3],
        new Float32Array(144),
      ),
      "sent model.layers.0.mlp.experts.1.up_proj.lora_B, a specialist's tensor (specialists " +
      "never leave the device)",
    ],
    [
      withTensor(good, "model.layers.0.self_attn.x_proj.lora_A", [3, 12], new Float32Array(36)),
      'sent "model.layers.0.self_attn.x_proj.lora_A", which is not an adapter tensor',
    ],
    [
      withTensor(good, "h.7.attn.c_attn.lora_A", [3, 12], new Float32Array(36)),
      "sent h.7.attn.c_attn.lora_A, which the server did not send this round",
    ],
    [
      { ...good, tensors: lacking },
      "it lacks h.0.mlp.experts.0.c_fc.lora_A (and 1 more) of the 16 shared tensors",
    ],
    [
      withTensor(good, firstName, [first.shape[1], first.shape[0]], first.data),
      `${firstName} is [${first.shape[1]},${first.shape[0]}], expected [${first.shape}]`,
    ],
    [
      withTensor(good, firstName, first.shape, first.data.subarray(1)),
      `${firstName} holds ${first.data.length - 1} values for shape [${first.shape}]`,
    ],
    [
      withTensor(
        good,
        firstName,
        first.shape,
        Float64Array.from(first.data) as unknown as Float32Array,
      ),
      `${firstName} is not float32`,
    ],
    [
      withTensor(good, firstName, first.shape, nan),
      `${firstName}[7] is NaN (and 1 more non-finite values)`,
    ],
    [withTensor(good, firstName, first.shape, inf), `${firstName}[4] is -Infinity`],
    [
      { ...good, tensors: huge },
      // 1e6 in each of the 1152 shared values: 1e6·√1152
      "its update's L2 norm 3.394e+7 exceeds the bound 1.000 (max update norm)",
    ],
  ];
  for (const [message, problem] of cases) {
    assertEquals(refusal(message), `client 2, round 5: update refused: ${problem}`);
    const verdict = validateMessage(message, expectation());
    assert(!verdict.accepted);
    assertEquals([verdict.refusal.client, verdict.refusal.round, verdict.refusal.problem], [
      2,
      5,
      problem,
    ]);
  }
});

Deno.test("validate: a method sharing all experts accepts expert 1 (the spec decides, not the name)", () => {
  const all = shared(allTensors(1), METHOD_SPECS["comigs-2g"]);
  assert(all.has("h.0.mlp.experts.1.c_fc.lora_A"));
  const expect = expectation({ shapes: shapesOf(all), global: all, maxUpdateNorm: 0 });
  assert(validateMessage({ round: 5, sender: 2, trainTokens: 1, tensors: all }, expect).accepted);
});

Deno.test("validate: unreadable bytes and F16 storage are refused, not thrown", () => {
  const bytes = encodeMessage(honest(1e-3));
  const truncated = validateUpdate(bytes.subarray(0, bytes.length - 10), expectation());
  assert(!truncated.accepted);
  assert(
    truncated.refusal.reason.startsWith(
      "client 2, round 5: update refused: the message cannot be read (",
    ),
    truncated.refusal.reason,
  );
  const garbage = validateUpdate(new Uint8Array(3), expectation());
  assert(!garbage.accepted && garbage.refusal.problem.includes("too short"));
  // A NaN in the bytes is caught by the decoder itself.
  const [firstName, first] = [...GLOBAL][0];
  const nan = first.data.slice();
  nan[2] = NaN;
  const nanBytes = validateUpdate(
    encodeMessage(withTensor(honest(1e-3), firstName, first.shape, nan)),
    expectation(),
  );
  assert(!nanBytes.accepted && nanBytes.refusal.problem.includes("NaN"));
  // An F16 tensor decodes to float32 values, but it is not what a client sends.
  const f16 = f16Message(honest(0));
  const verdict = validateUpdate(f16, expectation());
  assert(!verdict.accepted);
  assertEquals(verdict.refusal.problem, `${firstName} is stored as F16; only F32 is accepted`);
});

/** The message's bytes with its first tensor stored as F16 (values rounded to half precision). */
function f16Message(message: Message): Uint8Array {
  const bytes = serializeSafetensors(message.tensors, {
    round: String(message.round),
    sender: String(message.sender),
    train_tokens: String(message.trainTokens),
  });
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const names = [...message.tensors.keys()];
  let offset = 0;
  const chunks: Uint8Array[] = [];
  names.forEach((name, i) => {
    const data = message.tensors.get(name)!.data;
    const width = i === 0 ? 2 : 4;
    const raw = new Uint8Array(data.length * width);
    const out = new DataView(raw.buffer);
    // The F16 tensor's bytes stay 0: its dtype is refused before any value is looked at.
    if (width === 4) data.forEach((x, k) => out.setFloat32(4 * k, x, true));
    header[name] = {
      dtype: i === 0 ? "F16" : "F32",
      shape: header[name].shape,
      data_offsets: [offset, offset + raw.length],
    };
    offset += raw.length;
    chunks.push(raw);
  });
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

Deno.test("validate: AdamW moves a coordinate by at most ADAM_STEP_BOUND·lr per step", () => {
  const h = { lr: 2e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01 };
  // Cauchy–Schwarz: |m̂|/√v̂ ≤ (1−β1)/√((1−β2)(1−β1²/β2)), reached by gradients ∝ (β2/β1)^t.
  const ratioBound = (1 - h.beta1) / Math.sqrt((1 - h.beta2) * (1 - h.beta1 ** 2 / h.beta2));
  assert(Math.abs(ratioBound - 1.16496) < 1e-5);
  const worstCase = (t: number) => (h.beta2 / h.beta1) ** t;
  const rng = new Rng(11);
  const heavyTailed = () => (rng.next() - 0.5) / (rng.next() + 1e-6) ** 2;
  for (const gradient of [worstCase, heavyTailed]) {
    const state = { p: new Float64Array([0.09]), m: new Float64Array(1), v: new Float64Array(1) };
    let worst = 0;
    for (let t = 1; t <= 3000; t++) {
      const before = state.p[0];
      adamwStepRef(state, [gradient(t)], t, h);
      const move = Math.abs(state.p[0] - before);
      const adamPart = (move - h.lr * h.weightDecay * Math.abs(before)) / h.lr;
      assert(adamPart <= ratioBound * (1 + 1e-12), `step ${t}: |m̂/√v̂| = ${adamPart}`);
      assert(move <= ADAM_STEP_BOUND * h.lr, `step ${t} moved ${move}`);
      worst = Math.max(worst, adamPart);
    }
    if (gradient === worstCase) assert(worst > 1.16, `the worst case only reached ${worst}`);
  }
});

Deno.test("validate: the default bound for the shipped defaults is 2·lr·T·√n = 10.24", () => {
  const base: GPT2Config = { ...BASE, n_layer: 4, n_embd: 128, n_head: 4 };
  const shapes = adapterShapes(base, {
    rank: DEFAULTS.rank,
    alpha: DEFAULTS.alpha,
    scaling: DEFAULTS.scaling,
    topK: DEFAULTS.topK,
    lbCoef: DEFAULTS.lbCoef,
    lbRho: DEFAULTS.lbRho,
    experts: [2, 2, 2, 2],
  });
  let values = 0;
  for (const [name, [rows, cols]] of shapes) {
    if (isShared(METHOD_SPECS[DEFAULTS.method], adapterRole(name))) values += rows * cols;
  }
  assertEquals(values, 65536);
  assertEquals(defaultMaxUpdateNorm(DEFAULTS.lr, DEFAULTS.localSteps, values), 10.24);
});
