// The server's averaging of the shared tensors (method.md §2): a uniform mean over clients (the
// authors' default) or one weighted by training tokens. Sums run in float64 in the clients'
// order, so the result is deterministic; every client must send the same names and shapes
// (methods share only what all clients hold: attention LoRA and the generalist).
import type { NamedTensor } from "../model/safetensors.ts";
import type { Message } from "./message.ts";

export type Weighting = "uniform" | "tokens";
export const WEIGHTINGS: readonly Weighting[] = ["uniform", "tokens"];

export function aggregate(
  messages: readonly Message[],
  weighting: Weighting,
): Map<string, NamedTensor> {
  if (messages.length === 0) throw new Error("aggregate: no client messages");
  const names = [...messages[0].tensors.keys()].sort();
  for (const m of messages) {
    const theirs = [...m.tensors.keys()].sort();
    if (theirs.join() !== names.join()) {
      throw new Error(
        `aggregate: client ${m.sender} sent [${theirs.join(", ")}], client ` +
          `${messages[0].sender} sent [${names.join(", ")}]; clients must share the same tensors`,
      );
    }
  }
  const totalTokens = messages.reduce((sum, m) => sum + m.trainTokens, 0);
  if (weighting === "tokens" && !(totalTokens > 0)) {
    throw new Error("aggregate: token weighting needs clients with training tokens");
  }
  const weights = messages.map((m) =>
    weighting === "uniform" ? 1 / messages.length : m.trainTokens / totalTokens
  );
  const out = new Map<string, NamedTensor>();
  for (const name of names) {
    const { shape } = messages[0].tensors.get(name)!;
    const sum = new Float64Array(messages[0].tensors.get(name)!.data.length);
    messages.forEach((m, c) => {
      const t = m.tensors.get(name)!;
      if (t.shape.join() !== shape.join()) {
        throw new Error(
          `aggregate: ${name} is [${t.shape}] from client ${m.sender}, [${shape}] before`,
        );
      }
      for (let i = 0; i < sum.length; i++) sum[i] += weights[c] * t.data[i];
    });
    out.set(name, { shape: [...shape], data: Float32Array.from(sum) });
  }
  return out;
}
