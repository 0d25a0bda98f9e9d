// A networked client's life (fed/network.ts), with nothing but fetch and the GPU, so a Deno
// process (fed/join.ts) and a browser tab (cli/browser_page.ts) run the same one: join the
// server, then poll for tasks and answer them until the run is done. Where the client's state
// is kept is the caller's (StateStore): files in Deno, memory in a tab.
import type { Client } from "./client.ts";
import {
  basePerplexity,
  type FederationHooks,
  LocalEndpoint,
  type Streams,
  type TrainOptions,
} from "./federation.ts";
import type { Join, Reply, RunInfo, Task } from "./network.ts";
import { encodeAdapters } from "../model/adapters.ts";
import type { GPT2 } from "../model/gpt2.ts";

type Progress = FederationHooks["progress"];

/** A client's state after its last fit and the one before (a fit the server lost is redone). */
export interface StateStore {
  /** Loads the latest state there is and returns its round (0 when there is none yet). */
  restore(): Promise<number>;
  /** Goes back to the state before the latest fit and returns its round. */
  previous(): Promise<number>;
  /** Keeps the client's state after the fit of `round`; the latest becomes the previous one. */
  save(round: number): Promise<void>;
}

/** A StateStore in memory (a browser tab: the state lives as long as the tab). */
export class MemoryStates implements StateStore {
  #states: { round: number; state: Awaited<ReturnType<Client["exportState"]>> }[] = [];

  constructor(readonly client: Client) {}

  async restore(): Promise<number> {
    if (!this.#states.length) this.#states = [{ round: 0, state: await this.client.exportState() }];
    return this.#states.at(-1)!.round;
  }

  previous(): Promise<number> {
    const prev = this.#states.at(-2);
    if (!prev) throw new Error("no state before the latest fit: cannot redo it");
    this.client.importState(prev.state);
    return Promise.resolve(prev.round);
  }

  async save(round: number): Promise<void> {
    this.#states = [...this.#states.slice(-1), { round, state: await this.client.exportState() }];
  }
}

/** How long a client keeps retrying an unreachable server before it gives up. */
const UNREACHABLE_S = 600;

/** The run's options and base config from the server at `server`. */
export function runInfo(server: string, progress: Progress): Promise<RunInfo> {
  return request<RunInfo>(server, "/run", {}, progress);
}

/**
 * Client `client` of the run at `server`, holding `data` (its category), until the run is
 * done; returns the rounds it fitted. `saveAdapters` gets its adapters file after the last
 * evaluation (the run's result for it).
 */
export async function clientLoop(
  { server, options, model, client, data, store, progress, saveAdapters }: {
    server: string;
    options: TrainOptions;
    model: GPT2;
    client: Client;
    data: Streams;
    store: StateStore;
    progress: Progress;
    saveAdapters(bytes: Uint8Array): Promise<void>;
  },
): Promise<number> {
  const id = client.id;
  const endpoint = new LocalEndpoint(client, [data.test]);
  try {
    let fitted = await store.restore();
    progress.log(
      `client ${id} (${data.name}): ${data.train.length} training tokens` +
        (fitted ? `, continuing after round ${fitted}` : ""),
    );
    const hello = async (): Promise<string> => {
      const { needPretrained } = await runInfo(server, progress);
      const body: Join = {
        name: data.name,
        trainTokens: data.train.length,
        pretrainedPpl: needPretrained
          ? await basePerplexity(model, data.test, options.batch, options.seq)
          : null,
      };
      const { session } = await request<{ session: string }>(server, `/join?client=${id}`, {
        method: "POST",
        body: JSON.stringify(body),
      }, progress);
      return session;
    };
    let session = await hello();
    const at = (path: string) => `${path}?client=${id}&session=${session}`;
    while (true) {
      const response = await fetchRetrying(server, at("/task"), {}, progress);
      if (response.status === 204) continue;
      if (response.status === 401) {
        // The server restarted (--resume): join it again.
        await response.body?.cancel();
        session = await hello();
        continue;
      }
      if (!response.ok) throw new Error(`server: ${response.status} ${await response.text()}`);
      const task = JSON.parse(response.headers.get("x-comigs-task")!) as Task;
      const body = new Uint8Array(await response.arrayBuffer());
      if (task.kind === "done") break;
      const parameters = task.hasParameters ? body : null;
      let reply: Reply, result = new Uint8Array();
      try {
        if (task.kind === "evaluate") {
          reply = {
            kind: "evaluate",
            round: task.round,
            ...await endpoint.evaluate(task.round, parameters),
          };
          // The last evaluation holds the final shared tensors: the run's result for this client.
          if (task.round === options.rounds) {
            await saveAdapters(encodeAdapters(model.config, {
              config: client.adapters.config,
              values: await client.adapters.values(),
            }));
          }
        } else {
          if (fitted === task.round) fitted = await store.previous();
          if (fitted !== task.round - 1) {
            throw new Error(
              `its state is after round ${fitted} but the server asks for round ${task.round}; ` +
                `restart it with this run's folder`,
            );
          }
          let reports = Promise.resolve();
          progress.total = options.rounds * task.steps;
          const first = (task.round - 1) * task.steps;
          progress.begin(first);
          let taken = 0;
          const fit = await endpoint.fit(task.round, task.steps, parameters, (step) => {
            progress.update({
              step: first + ++taken,
              context: `client ${id} (${data.name}) round ${task.round}/${options.rounds}`,
              tokensPerSecond: step.tokens / step.seconds,
              loss: step.loss,
            });
            reports = reports.then(() =>
              post(server, at("/progress"), JSON.stringify(step)).catch(() => {})
            );
          });
          await reports;
          await store.save(task.round);
          fitted = task.round;
          result = new Uint8Array(fit.result);
          reply = { kind: "fit", round: task.round, step: fit.step, meanLoss: fit.meanLoss };
        }
      } catch (e) {
        await post(server, at("/reply"), "", {
          kind: "error",
          message: (e as Error).message,
        }).catch(() => {});
        throw e;
      }
      // A server that went away meanwhile asks again once it is back (the fit is then redone
      // from the state before it, with the same bits).
      await post(server, at("/reply"), result, reply).catch((e: Error) =>
        progress.log(`the server did not take the reply of round ${task.round}: ${e.message}`)
      );
    }
    progress.done();
    return fitted;
  } finally {
    endpoint.dispose();
  }
}

/** fetch, retrying while the server cannot be reached (it may be restarting). */
async function fetchRetrying(
  server: string,
  path: string,
  init: RequestInit,
  progress: Progress,
): Promise<Response> {
  const start = performance.now();
  let warned = false;
  while (true) {
    try {
      return await fetch(`${server}${path}`, init);
    } catch (e) {
      if ((performance.now() - start) / 1000 > UNREACHABLE_S) {
        throw new Error(`cannot reach the server at ${server}: ${(e as Error).message}`);
      }
      if (!warned) progress.log(`cannot reach the server at ${server}; retrying`);
      warned = true;
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

async function request<T>(
  server: string,
  path: string,
  init: RequestInit,
  progress: Progress,
): Promise<T> {
  const response = await fetchRetrying(server, path, init, progress);
  if (!response.ok) throw new Error(`server: ${response.status} ${await response.text()}`);
  return await response.json() as T;
}

async function post(
  server: string,
  path: string,
  body: BodyInit,
  reply?: Reply,
): Promise<void> {
  const response = await fetch(`${server}${path}`, {
    method: "POST",
    body,
    headers: reply ? { "x-comigs-reply": JSON.stringify(reply) } : {},
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`server: ${response.status} ${text}`);
}
