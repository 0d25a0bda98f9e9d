// A client's routing analysis made by hand for the page's tests: tokens of one's choosing with
// gates of known weights, tallied as the analysis tallies them.
import {
  type ClientRouting,
  generalistWeights,
  type RoutingMeta,
  streamWords,
  tallyGates,
} from "../../model/routing.ts";

export const META: RoutingMeta = {
  run: "runs/<x>&y",
  method: "comigs-1g1s",
  scenario: "topics",
  ood: false,
  seed: 0,
  seq: 16,
  maxTokens: 100,
};

/**
 * One client whose tokens are `texts`, with two layers of E = 2 gates: the generalist's weight
 * on token p is (p + 1) / (n + 1) in layer 0 and 1 − that in layer 5.
 */
export function client(texts: string[], name = "press"): ClientRouting {
  const n = texts.length;
  const words = streamWords([...texts, ""], 16);
  const layer = (f: (p: number) => number) =>
    Float32Array.from({ length: 2 * n }, (_, i) => i % 2 ? 1 - f(i >> 1) : f(i >> 1));
  const gates = [layer((p) => (p + 1) / (n + 1)), layer((p) => 1 - (p + 1) / (n + 1))];
  return {
    client: 0,
    name,
    tokens: n,
    layers: gates.map((g, k) => tallyGates(words, g, 2, [0, 5][k])),
    shown: {
      texts,
      kinds: words.map((w) => w?.kind ?? null),
      generalist: gates.map((g) => generalistWeights(g, 2, n)),
    },
  };
}
