// A comigs client as a node of a Flower federation, in Deno (`deno task flower-node`): it joins
// the SuperLink, learns the run's options from the ServerApp's first message, builds its model and
// Client exactly as the simulation builds client `client` (fed/factories.ts), and answers the
// ServerApp until the run is done (fed/client_loop.ts through link.ts). Its folder:
//   node-key.pem, node-key.pub  its identity (unless --key names one), the public key in OpenSSH
//                               form for `flwr supernode register` when authentication is on
//   flower.json                 the SuperLink, its node id and its run (a restart takes them back)
//   config.json                 the run's options as this node resolved them
//   state.safetensors, state.prev.safetensors   after its last fit and the one before
//   adapters.safetensors        after the last evaluation: its specialists never leave it
// A node killed at any moment and started again with the same folder takes its session back
// (same node id, no wait) and continues from its last fit.
import type { Engine } from "../../engine/device.ts";
import { createModel } from "../../model/load.ts";
import type { Progress } from "../../model/progress.ts";
import { writeFileAtomic } from "../../model/safetensors.ts";
import { clientLoop } from "../client_loop.ts";
import { makeClient, makeStrategy } from "../factories.ts";
import type { TrainOptions } from "../options.ts";
import { loadRunInputs } from "../run.ts";
import { writeJson } from "../run_folder.ts";
import type { ClientCorpus } from "../scenarios.ts";
import { StateFiles } from "../state_files.ts";
import { FlowerServerLink } from "./link.ts";
import { FlowerNode, type FlowerTask, KeyNotRegisteredError } from "./node.ts";
import {
  exportPrivateKeyPem,
  generateNodeKeys,
  importPrivateKeyPem,
  type NodeKeys,
  publicKeyOpenSsh,
} from "./node_keys.ts";
import { checkNodeOptions, type NodeLocalOptions, nodeTrainOptions } from "./run_options.ts";

export interface FlowerNodeRunOptions extends NodeLocalOptions {
  /** The SuperLink's address: http://HOST:PORT (--insecure) or https://HOST:PORT (TLS). */
  superlink: string;
  /** PEM text of the CA that signed the SuperLink's certificate (TLS with a private CA). */
  caCert?: string;
  /** The node's private key file (PKCS#8 PEM); default `<out>/node-key.pem`, made when absent. */
  key?: string;
  /** Seconds between heartbeats (Flower's range 10..1800; default 30). */
  heartbeatIntervalS?: number;
}

export interface FlowerNodeResult {
  /** The client's category. */
  name: string;
  /** The round of its last fit. */
  rounds: number;
  /** Its adapters file, or null when the run ended before its last evaluation reached it. */
  adapters: string | null;
  /** Why the run ended before this node's last evaluation (null: it did not). */
  endedEarly: string | null;
}

/** What flower.json keeps for a restart. */
interface Saved {
  superlink: string;
  nodeId: string;
  runId?: string;
}

/**
 * Takes part in the Flower run that reaches this node first (or the one its folder holds) until
 * it is done. `startEngine` runs once the run's options are known and checked.
 */
export async function flowerNodeRun(
  startEngine: () => Promise<Engine>,
  opts: FlowerNodeRunOptions,
  hooks: {
    progress: Progress;
    /** The client's documents instead of the scenario's (clients: their number). */
    corpora?: ClientCorpus[];
    /** The connected node, e.g. to sign it off on a signal. */
    connected?(node: FlowerNode): void;
  },
): Promise<FlowerNodeResult> {
  const { progress } = hooks;
  checkNodeOptions(opts);
  const out = opts.out;
  await Deno.mkdir(out, { recursive: true });
  const keys = await nodeKeys(opts.key ?? `${out}/node-key.pem`, opts.key === undefined);
  // The public key as `flwr supernode register` takes it (with authentication on).
  await Deno.writeTextFile(`${out}/node-key.pub`, await publicKeyOpenSsh(keys));
  const savedPath = `${out}/flower.json`;
  const saved = await readSaved(savedPath);
  const node = await FlowerNode.connect({
    superlink: opts.superlink,
    caCert: opts.caCert,
    keys,
    nodeId: saved?.superlink === opts.superlink ? BigInt(saved.nodeId) : undefined,
    heartbeatIntervalS: opts.heartbeatIntervalS,
    pollIntervalS: 0.5,
    log: (line) => progress.log(line),
  }).catch((e) => {
    if (!(e instanceof KeyNotRegisteredError)) throw e;
    // The CLI wrote the key in the form `flwr supernode register` takes: say where.
    throw new KeyNotRegisteredError(`${out}/node-key.pub`);
  });
  hooks.connected?.(node);
  let first: FlowerTask | undefined;
  try {
    // A folder that holds a run's state serves that run only, whatever address reaches it.
    const runId = saved?.runId;
    await writeJson(savedPath, { superlink: opts.superlink, nodeId: String(node.nodeId), runId });
    progress.log(`flower node ${node.nodeId} at ${opts.superlink}: waiting for the ServerApp`);
    if (runId !== undefined) {
      const over = await node.runOver(BigInt(runId));
      if (over !== null) {
        throw new Error(
          `run ${runId}, which ${out} holds, is over (${over}); start a new node ` +
            `with another --out to take part in another run`,
        );
      }
    }
    first = await nextMessage(node);
    if (runId !== undefined && first.runId !== BigInt(runId)) {
      throw new Error(
        `${out} holds the state of run ${runId}, but run ${first.runId} asks; ` +
          `start a new node with another --out to take part in it`,
      );
    }
    const clients = opts.clients ?? hooks.corpora?.length;
    const options = nodeTrainOptions(first.config, { ...opts, clients });
    await checkSameRun(out, options);
    await writeJson(`${out}/config.json`, options);
    await writeJson(savedPath, {
      superlink: opts.superlink,
      nodeId: String(node.nodeId),
      runId: String(first.runId),
    });
    const engine = await startEngine();
    const { config, weights, categories } = await loadRunInputs(
      options,
      hooks.corpora,
      hooks.progress,
    );
    const data = categories[opts.client];
    const model = createModel(engine, config, weights);
    const client = makeClient(engine, model, options, data, opts.client);
    const link = new FlowerServerLink(node, first, {
      runId: first.runId,
      options,
      facts: {
        client: opts.client,
        name: data.name,
        experts: options.experts[opts.client],
        "train-tokens": data.train.length,
        scenario: options.scenario,
        ood: options.ood,
        "base-model": options.model,
      },
      initial: makeStrategy(options, config).initializeParameters(),
      log: (line) => progress.log(`flower node ${node.nodeId}: ${line}`),
    });
    first = undefined; // the link answers it now
    const adapters = `${out}/adapters.safetensors`;
    let wrote = false;
    try {
      const rounds = await clientLoop({
        link,
        options,
        model,
        client,
        data,
        store: new StateFiles(out, client),
        progress,
        saveAdapters: async (bytes) => {
          await writeFileAtomic(adapters, bytes);
          wrote = true;
        },
      });
      return {
        name: data.name,
        rounds,
        adapters: wrote ? adapters : null,
        endedEarly: link.endedEarly,
      };
    } finally {
      client.dispose();
      model.dispose();
    }
  } catch (e) {
    // The ServerApp hears why instead of waiting for its round timeout.
    await first?.fail((e as Error).message).catch(() => {});
    throw e;
  } finally {
    await node.close();
  }
}

/** The first message for this node, waiting as long as it takes. */
async function nextMessage(node: FlowerNode): Promise<FlowerTask> {
  while (true) {
    const task = await node.pull();
    if (task) return task;
    await node.pause(node.pollIntervalS);
  }
}

/** The node's key pair from `path` (made there when `make` and absent). */
async function nodeKeys(path: string, make: boolean): Promise<NodeKeys> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    if (!make) throw new Error(`--key ${path} does not exist; give a PKCS#8 PEM private key`);
    const keys = await generateNodeKeys();
    await Deno.writeTextFile(path, await exportPrivateKeyPem(keys), { mode: 0o600 });
    return keys;
  }
  return await importPrivateKeyPem(text, path);
}

async function readSaved(path: string): Promise<Saved | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  const saved = JSON.parse(text) as Saved;
  if (typeof saved.superlink !== "string" || !/^\d+$/.test(saved.nodeId)) {
    throw new Error(`${path}: not a flower node's record (superlink, nodeId)`);
  }
  return saved;
}

/** A restarted node must be given the options its folder's state was made with. */
async function checkSameRun(out: string, options: TrainOptions): Promise<void> {
  let before: string;
  try {
    before = await Deno.readTextFile(`${out}/config.json`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw e;
  }
  const now = JSON.stringify(options, null, 2) + "\n";
  if (before !== now) {
    throw new Error(
      `${out}/config.json holds other options than this run's (this node's flags or the ` +
        `ServerApp's run config changed); start it with the same flags, or with another --out`,
    );
  }
}
