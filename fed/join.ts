// A client of a networked run served by our own server (fed/http_server.ts): it takes the run's options from the server, keeps
// only its own category of the scenario, builds its model and Client exactly as the simulation
// does, and answers the server's tasks until the run is done. Its folder holds config.json (the
// run's options), state.safetensors (after its last fit) and state.prev.safetensors (after the one
// before), and after the last evaluation adapters.safetensors: its specialists never leave it.
import type { Engine } from "../engine/device.ts";
import type { BaseCheckpoint } from "../model/checkpoint.ts";
import { createModel } from "../model/load.ts";
import { writeFileAtomic } from "../model/safetensors.ts";
import type { Progress } from "../model/progress.ts";
import { clientLoop } from "./client_loop.ts";
import { makeClient } from "./factories.ts";
import { type CredentialStore, HttpServerLink, runInfo } from "./http_link.ts";
import type { TrainOptions } from "./options.ts";
import { loadRunInputs } from "./run.ts";
import { writeJson } from "./run_folder.ts";
import type { ClientCorpus } from "./scenarios.ts";
import { StateFiles } from "./state_files.ts";
import type { Streams } from "./streams.ts";

export interface JoinOptions {
  /** The server's address, e.g. http://127.0.0.1:8700 */
  server: string;
  client: number;
  out: string;
  /** This device's copy of the base model (default: the path the server names). */
  model?: string;
}

/** Takes part in the run at `server` as client `client` until the run is done. */
export async function joinRun(
  engine: Engine,
  join: JoinOptions,
  hooks: { progress: Progress; corpora?: ClientCorpus[] },
): Promise<{ name: string; rounds: number }> {
  const { progress } = hooks;
  const { server, options, config, weights, data } = await openJoin(join, hooks);
  const model = createModel(engine, config, weights);
  const client = makeClient(engine, model, options, data, join.client);
  try {
    const rounds = await clientLoop({
      link: new HttpServerLink(server, join.client, progress, credentialFile(join.out)),
      options,
      model,
      client,
      data,
      store: new StateFiles(join.out, client),
      progress,
      saveAdapters: (bytes) => writeFileAtomic(`${join.out}/adapters.safetensors`, bytes),
    });
    return { name: data.name, rounds };
  } finally {
    client.dispose();
    model.dispose();
  }
}

/**
 * What client `join.client` of the run at `join.server` works from, in Deno or for a tab: the
 * run's options (with this device's base model path), that base model, checked to be the
 * server's, and its own category's streams; `join.out` gets the run's config.json.
 */
export async function openJoin(
  join: JoinOptions,
  hooks: { progress: Progress; corpora?: ClientCorpus[] },
): Promise<BaseCheckpoint & { server: string; options: TrainOptions; data: Streams }> {
  const server = join.server.replace(/\/+$/, "");
  const id = join.client;
  const info = await runInfo(server, hooks.progress);
  const options = { ...info.options, model: join.model ?? info.options.model };
  if (!Number.isInteger(id) || id < 0 || id >= options.clients) {
    throw new RangeError(`--client must be in 0..${options.clients - 1} for this run, got ${id}`);
  }
  await Deno.mkdir(join.out, { recursive: true });
  await writeJson(`${join.out}/config.json`, options);
  const { config, weights, categories } = await loadRunInputs(
    options,
    hooks.corpora,
    hooks.progress,
  );
  if (JSON.stringify(config) !== JSON.stringify(info.base)) {
    throw new Error(
      `the base model at ${options.model} is not the server's (config ${JSON.stringify(config)}` +
        ` vs ${JSON.stringify(info.base)}); pass --model with a copy of the server's`,
    );
  }
  return { server, options, config, weights, data: categories[id] };
}

/** The credential the server gave this client id, kept in its folder (only it may rejoin). */
function credentialFile(dir: string): CredentialStore {
  const path = `${dir}/credential`;
  return {
    load: () => Deno.readTextFile(path).then((text) => text.trim(), () => null),
    save: (credential) => writeFileAtomic(path, new TextEncoder().encode(credential + "\n")),
  };
}
