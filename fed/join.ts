// A client of a networked run (fed/network.ts): it takes the run's options from the server, keeps
// only its own category of the scenario, builds its model and Client exactly as the simulation
// does, and answers the server's tasks until the run is done. Its folder holds config.json (the
// run's options), state.safetensors (after its last fit) and state.prev.safetensors (after the one
// before), and at the end adapters.safetensors: its specialists never leave it.
import type { Engine } from "../engine/device.ts";
import { encodeAdapters } from "../model/adapters.ts";
import { GPT2 } from "../model/gpt2.ts";
import { readSafetensors, writeFileAtomic, writeSafetensors } from "../model/safetensors.ts";
import type { ProgressBar } from "../cli/progress.ts";
import type { Client, ClientState } from "./client.ts";
import { type StateCounters, stateFromTensors, stateTensors } from "./client_state.ts";
import { basePerplexity, LocalEndpoint, makeClient } from "./federation.ts";
import type { Join, Reply, RunInfo, Task } from "./network.ts";
import { loadRunInputs, writeJson } from "./run.ts";
import type { ClientCorpus } from "./scenarios.ts";

export interface JoinOptions {
  /** The server's address, e.g. http://127.0.0.1:8700 */
  server: string;
  client: number;
  out: string;
  /** This device's copy of the base model (default: the path the server names). */
  model?: string;
}

/** How long a client keeps retrying an unreachable server before it gives up. */
const UNREACHABLE_S = 600;

/** Takes part in the run at `server` as client `client` until the run is done. */
export async function joinRun(
  engine: Engine,
  join: JoinOptions,
  hooks: { progress: ProgressBar; corpora?: ClientCorpus[] },
): Promise<{ name: string; rounds: number }> {
  const { progress } = hooks;
  const server = join.server.replace(/\/+$/, "");
  const id = join.client;
  const info = await request<RunInfo>(server, "/run", { method: "GET" }, progress);
  const options = { ...info.options, model: join.model ?? info.options.model };
  if (!Number.isInteger(id) || id < 0 || id >= options.clients) {
    throw new RangeError(`--client must be in 0..${options.clients - 1} for this run, got ${id}`);
  }
  await Deno.mkdir(join.out, { recursive: true });
  await writeJson(`${join.out}/config.json`, options);
  const { config, weights, categories } = await loadRunInputs(options, hooks.corpora);
  if (JSON.stringify(config) !== JSON.stringify(info.base)) {
    throw new Error(
      `the base model at ${options.model} is not the server's (config ${JSON.stringify(config)}` +
        ` vs ${JSON.stringify(info.base)}); pass --model with a copy of the server's`,
    );
  }
  const data = categories[id];
  const model = new GPT2(engine, config, weights);
  const client = makeClient(engine, model, options, data, id);
  const endpoint = new LocalEndpoint(client, [data.test]);
  const states = new StateFiles(join.out, client);
  const saveAdapters = async () =>
    await writeFileAtomic(
      `${join.out}/adapters.safetensors`,
      encodeAdapters(config, {
        config: client.adapters.config,
        values: await client.adapters.values(),
      }),
    );
  try {
    let fitted = await states.restore();
    progress.log(
      `client ${id} (${data.name}): ${data.train.length} training tokens` +
        (fitted ? `, continuing after round ${fitted}` : ""),
    );
    const hello = async (): Promise<string> => {
      const { needPretrained } = await request<RunInfo>(server, "/run", {}, progress);
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
          if (task.round === options.rounds) await saveAdapters();
        } else {
          if (fitted === task.round) fitted = await states.previous();
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
          await states.save(task.round);
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
    return { name: data.name, rounds: fitted };
  } finally {
    endpoint.dispose();
    client.dispose();
    model.dispose();
  }
}

/** The client's state after its last fit and the one before, written atomically. */
class StateFiles {
  constructor(readonly dir: string, readonly client: Client) {}

  #path(which: "state" | "state.prev") {
    return `${this.dir}/${which}.safetensors`;
  }

  /** Loads the latest state there is and returns its round (0, saving it, when there is none). */
  async restore(): Promise<number> {
    const latest = await this.#read("state") ?? await this.#read("state.prev");
    if (!latest) {
      await this.#write("state", 0);
      return 0;
    }
    this.client.importState(latest.state);
    return latest.round;
  }

  /** Goes back to the state before the latest fit (whose result the server lost). */
  async previous(): Promise<number> {
    const prev = await this.#read("state.prev");
    if (!prev) throw new Error(`${this.#path("state.prev")} is missing: cannot redo a fit`);
    this.client.importState(prev.state);
    return prev.round;
  }

  /** After the fit of `round`: the latest state becomes the previous one. */
  async save(round: number): Promise<void> {
    await Deno.rename(this.#path("state"), this.#path("state.prev")).catch(() => {});
    await this.#write("state", round);
  }

  async #write(which: "state" | "state.prev", round: number): Promise<void> {
    const { tensors, counters } = stateTensors(
      `client.${this.client.id}`,
      await this.client.exportState(),
    );
    await writeSafetensors(this.#path(which), tensors, {
      round: String(round),
      counters: JSON.stringify(counters),
    });
  }

  async #read(
    which: "state" | "state.prev",
  ): Promise<{ round: number; state: ClientState } | null> {
    const path = this.#path(which);
    if (!(await Deno.stat(path).then(() => true, () => false))) return null;
    const { tensors, metadata } = await readSafetensors(path);
    const counters = JSON.parse(metadata.counters ?? "null") as StateCounters | null;
    const round = Number(metadata.round);
    if (!counters || !Number.isInteger(round)) throw new Error(`${path}: not a client state`);
    return { round, state: stateFromTensors(tensors, `client.${this.client.id}`, counters) };
  }
}

/** fetch, retrying while the server cannot be reached (it may be restarting). */
async function fetchRetrying(
  server: string,
  path: string,
  init: RequestInit,
  progress: ProgressBar,
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
  progress: ProgressBar,
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
