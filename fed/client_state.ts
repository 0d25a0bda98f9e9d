// A client's state (adapters, both AdamW states, batch PRNG states, steps) as named tensors and
// counters, for files: a simulated run's resume.safetensors holds every client's under
// `client.<id>`, a networked client's own state file holds its one.
import { isAdapterName } from "../model/adapters.ts";
import type { AdamWState } from "../model/optim.ts";
import type { NamedTensor } from "../model/safetensors.ts";
import type { ClientState } from "./client.ts";
import type { NoiseState } from "./noise.ts";

/** The numbers of a state (JSON metadata beside the tensors). */
export interface StateCounters {
  step: number;
  trainRng: number;
  routerRng: number;
  /** AdamW step counts. */
  experts: number;
  routers?: number;
  /** Local DP: the client's noise stream (its key and how much was drawn). */
  noise?: NoiseState;
}

/** `state` as tensors named `<prefix>.<adapter name>` and `<prefix>.<experts|routers>.<m|v>.k`. */
export function stateTensors(
  prefix: string,
  state: ClientState,
): { tensors: [string, NamedTensor][]; counters: StateCounters } {
  const tensors: [string, NamedTensor][] = [];
  const flat = (name: string, data: Float32Array) =>
    tensors.push([name, { shape: [data.length], data }]);
  const moments = (group: string, adam: AdamWState) => {
    adam.m.forEach((m, k) => flat(`${prefix}.${group}.m.${k}`, m));
    adam.v.forEach((v, k) => flat(`${prefix}.${group}.v.${k}`, v));
  };
  for (const [name, data] of state.adapters) flat(`${prefix}.${name}`, data);
  moments("experts", state.experts);
  if (state.routers) moments("routers", state.routers);
  const counters = {
    step: state.step,
    trainRng: state.trainRng,
    routerRng: state.routerRng,
    experts: state.experts.step,
    routers: state.routers?.step,
    noise: state.noise,
  };
  return { tensors, counters };
}

/** The state `stateTensors(prefix, …)` wrote, back from a file's tensors. */
export function stateFromTensors(
  tensors: ReadonlyMap<string, NamedTensor>,
  prefix: string,
  counters: StateCounters,
): ClientState {
  const under = (start: string) =>
    [...tensors].filter(([name]) => name.startsWith(start)).map(([name, t]) =>
      [name.slice(start.length), t.data] as const
    );
  const moments = (group: string, step: number): AdamWState => {
    const list = (kind: string) =>
      under(`${prefix}.${group}.${kind}.`).sort((a, b) => Number(a[0]) - Number(b[0])).map((
        [, data],
      ) => data);
    return { step, m: list("m"), v: list("v") };
  };
  return {
    step: counters.step,
    trainRng: counters.trainRng,
    routerRng: counters.routerRng,
    adapters: new Map(under(`${prefix}.`).filter(([name]) => isAdapterName(name))),
    experts: moments("experts", counters.experts),
    routers: counters.routers === undefined ? undefined : moments("routers", counters.routers),
    noise: counters.noise,
  };
}
