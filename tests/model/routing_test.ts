// The routing analysis (model/routing.ts): which tokens are whole words and of which class, the
// gates gathered by class on synthetic gates with known answers, the report's rows, and on the
// GPU that the gates forwardAdapted exposes (read through a StreamCapture) are the top-k gate of
// its router logits, row by row at the right stream positions.
import type { Tensor } from "../../engine/tensor.ts";
import { ShapeError } from "../../engine/errors.ts";
import { type AdapterConfig, AdapterTensors, initAdapters } from "../../model/adapters.ts";
import { forwardAdapted } from "../../model/comigs.ts";
import type { GPT2Config } from "../../model/config.ts";
import { GPT2 } from "../../model/gpt2.ts";
import { initWeights } from "../../model/init.ts";
import {
  type ClientRouting,
  FUNCTION_WORDS,
  routingJson,
  routingMarkdown,
  signed,
  streamWords,
  tallyGates,
  topWords,
  type WordToken,
  wordToken,
} from "../../model/routing.ts";
import { StreamCapture } from "../../model/stream_capture.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { assertClose, gpuTest, Rng } from "../util.ts";

Deno.test("wordToken: whole words by the leading-space, neighbour and letter rules", () => {
  const fn = (word: string): WordToken => ({ word, kind: "function" });
  const content = (word: string): WordToken => ({ word, kind: "content" });
  const cases: [string | undefined, string, string | undefined, WordToken | null][] = [
    // A spaced word between spaced words; case is folded before the lookup.
    ["x", " the", " cat", fn("the")],
    ["x", " THE", " cat", fn("the")],
    ["x", " Cat", " sat", content("cat")],
    // No leading space: a word only at a window's start or after a non-letter.
    [undefined, "The", ",", fn("the")],
    ["\n", "The", " cat", fn("the")],
    ["(", "cat", ")", content("cat")],
    ["x", "the", " cat", null], // the second piece of a word ("xthe")
    ["x", "re", ".", null],
    // The first piece of a longer word: the next token starts with a letter.
    ["x", " walk", "ing", null],
    [undefined, "the", "re", null],
    // The next token starting with a non-letter, or no next token (end of the stream).
    ["x", " walk", "'s", content("walk")],
    ["x", " don", "'t", fn("don")],
    ["x", " cat", undefined, content("cat")],
    ["x", " cat", " ", content("cat")],
    // Not letters only: punctuation, numbers, mixed, two spaces, empty, broken UTF-8.
    ["x", ",", " cat", null],
    ["x", " 42", " cat", null],
    ["x", " b2b", " cat", null],
    ["x", "  the", " cat", null],
    ["x", " ", "the", null],
    ["x", "", " cat", null],
    ["x", "\ufffd", " cat", null],
    ["x", " it's", " x", null],
    // Letters of any script count; such words are content words.
    ["x", " été", ".", content("été")],
  ];
  for (const [previous, piece, next, expected] of cases) {
    assertEquals(
      wordToken(previous, piece, next),
      expected,
      `${JSON.stringify([previous, piece, next])}`,
    );
  }
});

Deno.test("FUNCTION_WORDS: lowercase single words of every closed class, no content words", () => {
  for (const word of FUNCTION_WORDS) assert(/^\p{Ll}+$/u.test(word), `"${word}"`);
  for (const word of ["the", "a", "of", "and", "he", "is", "would", "not", "which", "there"]) {
    assert(FUNCTION_WORDS.has(word), word);
  }
  for (const word of ["cat", "said", "house", "government", "time", "won"]) {
    assert(!FUNCTION_WORDS.has(word), word);
  }
});

Deno.test("streamWords: inputs only, and a window's first token has no previous token", () => {
  const pieces = ["x", "y", "z", ".", " the"];
  // T = 2: windows start at 0, 2, 4; "z" starts one; "y" follows a letter; "x" goes on as "y".
  assertEquals(streamWords(pieces, 2), [null, null, { word: "z", kind: "content" }, null]);
  // T = 3: "z" follows "y" inside a window.
  assertEquals(streamWords(pieces, 3), [null, null, null, null]);
  // The last token is only a target: 4 inputs for 5 tokens, none for one token.
  assertEquals(streamWords([" the", " the"], 8), [{ word: "the", kind: "function" }]);
  assertEquals(streamWords([" the"], 8), []);
});

// Gate values are f32 and their sums float64: 1e-6 covers rounding the decimal inputs to f32.
const SUM_TOL = 1e-6;
const near = (got: number | null, want: number, what: string) =>
  assert(got !== null && Math.abs(got - want) <= SUM_TOL, `${what}: ${got} ≠ ${want}`);

Deno.test("tallyGates: means per class, top-1 with ties to the generalist, per-word sums", () => {
  const the = { word: "the", kind: "function" } as const;
  const words: (WordToken | null)[] = [
    the,
    { word: "cat", kind: "content" },
    null,
    the,
    { word: "dog", kind: "content" },
  ];
  const gates = new Float32Array([
    [0.5, 0.5, 0], // tie: the generalist is the largest
    [0.2, 0.8, 0],
    [0.9, 0.1, 0], // not a word: left out
    [0.7, 0, 0.3],
    [0.3, 0.3, 0.4],
  ].flat());
  const tally = tallyGates(words, gates, 3, 0);
  assertEquals([tally.function.tokens, tally.content.tokens], [2, 2]);
  near(tally.function.generalistWeight, 1.2, "function weight");
  near(tally.content.generalistWeight, 0.5, "content weight");
  assertEquals([tally.function.generalistTop1, tally.content.generalistTop1], [2, 0]);
  const [fn] = topWords(tally, "function", 10);
  assertEquals([fn.word, fn.tokens], ["the", 2]);
  near(fn.generalist_weight, 0.6, "the");
  // Equal counts sort alphabetically; n limits the list.
  assertEquals(topWords(tally, "content", 10).map((w) => w.word), ["cat", "dog"]);
  assertEquals(topWords(tally, "content", 1).map((w) => w.word), ["cat"]);
  assertThrows(() => tallyGates(words, gates.subarray(1), 3, 0), ShapeError, "14 gate values");
});

Deno.test("routingJson and routingMarkdown: one row per client and layer, empty classes as –", () => {
  const words: (WordToken | null)[] = [{ word: "the", kind: "function" }, null];
  const clients: ClientRouting[] = [
    {
      client: 0,
      name: "press",
      tokens: 2,
      layers: [
        tallyGates(words, new Float32Array([0.25, 0.75, 1, 0]), 2, 0),
        tallyGates(words, new Float32Array([1, 1]), 1, 1),
      ],
      shown: { texts: [], kinds: [], generalist: [new Float32Array(0), new Float32Array(0)] },
    },
  ];
  const meta = {
    run: "runs/x",
    method: "comigs-1g1s",
    scenario: "topics",
    ood: false,
    seed: 0,
    seq: 2,
    maxTokens: 100,
  };
  const json = routingJson(meta, clients) as { rows: unknown[] };
  assertEquals(json.rows, [
    {
      client: 0,
      name: "press",
      layer: 0,
      experts: 2,
      function: { tokens: 1, generalist_weight: 0.25, generalist_top1: 0 },
      content: { tokens: 0, generalist_weight: null, generalist_top1: null },
    },
    {
      client: 0,
      name: "press",
      layer: 1,
      experts: 1,
      function: { tokens: 1, generalist_weight: 1, generalist_top1: 1 },
      content: { tokens: 0, generalist_weight: null, generalist_top1: null },
    },
  ]);
  const markdown = routingMarkdown(meta, clients);
  assert(markdown.includes("| 0 press | 0 | 2 | 1 | 0 | 0.250 | – | – | 0.000 | – |"), markdown);
  assert(markdown.includes("| 0 press | 1 | 1 | 1 | 0 | 1.000 | – | – | 1.000 | – |"), markdown);
  assert(markdown.includes("| 1 | the | 1 | 0.250 |  |  |  |"), markdown);
  // The summary line compares clients with both classes only.
  const both = tallyGates(
    [{ word: "the", kind: "function" }, { word: "cat", kind: "content" }],
    new Float32Array([0.75, 0.25, 0.25, 0.75]),
    2,
    0,
  );
  const summary = routingMarkdown(meta, [...clients, {
    client: 1,
    name: "x",
    tokens: 2,
    layers: [both],
    shown: { texts: [], kinds: [], generalist: [new Float32Array(0)] },
  }]);
  assert(
    summary.includes("for 1 of 1 clients with a router (mean difference +0.500)"),
    summary,
  );
});

Deno.test("signed: three decimals with a sign; a difference that rounds to zero is +0.000", () => {
  assertEquals(
    [signed(0.1234), signed(-0.1236), signed(-0.0004), signed(0.0004), signed(-0), signed(null)],
    ["+0.123", "-0.124", "+0.000", "+0.000", "+0.000", "–"],
  );
});

/** float64 reference of kernels/topk_gate.ts (method.md §1) for one row of logits. */
function referenceGate(logits: ArrayLike<number>, k: number): number[] {
  const E = logits.length, l = Array.from(logits);
  const max = Math.max(...l);
  if (k === 1) {
    const p = l.map((x) => Math.exp(x - max));
    const sum = p.reduce((a, b) => a + b, 0);
    const best = l.indexOf(max); // the first index holding the maximum
    return p.map((x, j) => j === best ? x / sum : 0);
  }
  const rank = (j: number) => l.filter((x, i) => x > l[j] || (x === l[j] && i < j)).length;
  const w = l.map((x, j) => rank(j) < Math.min(k, E) ? Math.exp(x - max) : 0);
  const sum = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / sum);
}

const TINY: GPT2Config = {
  n_layer: 3,
  n_head: 2,
  n_embd: 16,
  vocab_size: 37,
  n_positions: 8,
  layer_norm_epsilon: 1e-5,
};

/**
 * The GPU computes exp(l − max) and the division in f32 from the same f32 logits the reference
 * reads: WGSL bounds exp's error by 3 + 2|x| ULP, and the logits here differ by < 15 (checked),
 * so ≤ 33 ULP of a value ≤ 1 (~4e-6) plus the division's rounding (measured here: ≤ 8.4e-8).
 * Selection cannot differ: both sides see the same logits bit for bit.
 */
const GATE_TOL = { atol: 5e-6, rtol: 0 };

gpuTest("captured gates are the top-k gate of the captured router logits (E=1 gives 1)", async (
  engine,
) => {
  const model = new GPT2(engine, TINY, initWeights(TINY, 3));
  const rng = new Rng(11);
  // 23 tokens in windows of 5 and batches of 2: 5 windows (the last with 2 targets), 3 batches
  // (the last padded with an empty window).
  const stream = Uint32Array.from(rng.int(23, TINY.vocab_size));
  const base = { rank: 2, alpha: 4, scaling: "rslora" as const, lbCoef: 0.01, lbRho: 0.5 };
  const configs: AdapterConfig[] = [
    { ...base, topK: 2, experts: [2, 3, 1] }, // E=2,k=2; E=3,k=2; E=1
    { ...base, topK: 1, experts: [3, 1, 2] }, // E=3,k=1; E=1; E=2,k=1
  ];
  for (const [c, config] of configs.entries()) {
    const values = initAdapters(TINY, config, 5 + c);
    // Larger routers and nonzero lora_B than the init's, so gates are far from uniform and
    // each layer's input depends on the experts before it.
    for (const [name, data] of values) {
      if (name.endsWith("router.weight") || name.endsWith("lora_B")) {
        data.set(rng.normal(data.length, name.endsWith("lora_B") ? 0.1 : 0.7));
      }
    }
    const adapters = new AdapterTensors(engine, TINY, config, values);
    let routed: { logits: Tensor; gate: Tensor }[] = [];
    const capture = new StreamCapture(engine, TINY, stream, 2, 5, (tape, batch) => {
      // Sees every op forwardAdapted records, to keep the topk_gate ops' inputs and outputs.
      const record = tape.record.bind(tape);
      routed = [];
      tape.record = (op) => {
        if (op.name === "topk_gate") routed.push({ logits: op.inputs[0], gate: op.outputs[0] });
        record(op);
      };
      const { gates } = forwardAdapted(tape, model, adapters, batch);
      return [...gates, ...routed.map((r) => r.logits)];
    });
    const captured = await capture.capture();
    capture.dispose();
    const L = config.experts.length, positions = stream.length - 1;
    const routers = config.experts.flatMap((E, l) => E > 1 ? [l] : []);
    assertEquals(routed.length, routers.length, `config ${c}: one topk_gate per router`);
    let spread = 0;
    for (const [l, E] of config.experts.entries()) {
      const gates = captured[l];
      assertEquals(gates.length, positions * E, `config ${c} layer ${l}`);
      if (E === 1) {
        assert(gates.every((g) => g === 1), `config ${c} layer ${l}: E=1 gates must be 1`);
        continue;
      }
      const logits = captured[L + routers.indexOf(l)];
      const reference: number[] = [];
      for (let p = 0; p < positions; p++) {
        const row = logits.subarray(p * E, (p + 1) * E);
        spread = Math.max(spread, Math.max(...row) - Math.min(...row));
        reference.push(...referenceGate(row, config.topK));
      }
      assertClose(gates, reference, GATE_TOL, `config ${c} layer ${l} (E=${E}, k=${config.topK})`);
    }
    assert(spread > 1 && spread < 15, `logit spread ${spread}: routing must vary, within GATE_TOL`);
    adapters.dispose();
  }
  model.dispose();
});
