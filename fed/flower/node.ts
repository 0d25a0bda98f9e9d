// A comigs node in a Flower federation: it speaks the HTTP Fleet API of flwr 1.42.0 (no Python
// on the device) the way Flower's own SuperNode does (flwr/supernode/fleet_http_connection.py):
// register its key (or find it pre-registered when SuperNode authentication is on), activate,
// keep a heartbeat, pull the ServerApp's messages with their objects, confirm them, push replies
// with their objects, and deactivate (and unregister an ephemeral identity) when closed. A kept
// identity that knows its node id takes its session back at once (a restarted process).
//
//   const node = await FlowerNode.connect({ superlink: "http://127.0.0.1:9093" });
//   for await (const task of node.tasks()) {
//     await task.reply({ arrays, metrics: { "num-examples": n, loss } });
//   }
//
// fed/flower/link.ts drives a comigs client with it (`pull`, `pause`, `runOver`).

import type { NamedTensor } from "../../model/safetensors.ts";
import {
  decodeHeartbeatResponse,
  decodeNodeId,
  decodePullMessages,
  decodePullObject,
  decodePushMessages,
  decodePushObject,
  type MessageError,
  type Metadata,
  type PulledMessage,
  requests,
} from "./fleet.ts";
import {
  ERROR_CODES,
  FleetHttp,
  type FleetHttpOptions,
  FlowerConnectionError,
  FlowerRequestError,
} from "./fleet_http.ts";
import { generateNodeKeys, type NodeKeys } from "./node_keys.ts";
import {
  type FlowerObject,
  objectTree,
  type ParsedObject,
  parseObject,
  postOrder,
} from "./objects.ts";
import type { ConfigOut, ConfigValue, MetricValue } from "./record_values.ts";
import { inflateRecordDict, messageObject, replyContent, type ReplyRecords } from "./records.ts";

export interface FlowerNodeOptions extends FleetHttpOptions {
  /**
   * The node's identity. Give a kept key pair to come back as the same node after a restart,
   * and always when the SuperLink runs with --enable-supernode-auth (the operator registers its
   * public key, `publicKeyOpenSsh`). Without it the node makes a fresh one and unregisters it
   * when closed.
   */
  keys?: NodeKeys;
  /**
   * The node id `keys` had in an earlier session (a restarted process): the node takes that
   * session back at once with a heartbeat, instead of waiting until the SuperLink marks the dead
   * process offline (2 heartbeat intervals), so messages queued for it meanwhile are not lost.
   * When the SuperLink no longer knows that id, the node registers and activates as usual.
   */
  nodeId?: bigint;
  /** Seconds between the heartbeats the SuperLink expects: 10..1800 (Flower's default 30). */
  heartbeatIntervalS?: number;
  /** Seconds between polls for messages when none is waiting (default 1). */
  pollIntervalS?: number;
  /**
   * How long activation is retried while the SuperLink refuses it: a previous process of this
   * identity that died without deactivating holds the node online for up to 2 × its heartbeat
   * interval. Default: 2 × heartbeatIntervalS + 5 for a kept identity, 0 for a fresh one and
   * for a kept one without `nodeId` when SuperNode authentication is on (it was never active
   * here, so a refusal means that its key is not registered).
   */
  activationPatienceS?: number;
}

/**
 * A reply's records. Metrics: `num-examples` (FedAvg's weight) is written as an integer, every
 * other number as a float. Config: text, flags and integers (the node's own facts).
 */
export interface FlowerReply {
  arrays?: Map<string, NamedTensor>;
  metrics?: Record<string, number | number[]>;
  config?: Record<string, string | boolean | number>;
}

export interface FlowerTask {
  /** Flower's message type: train, evaluate, or query (a question outside the rounds). */
  kind: "train" | "evaluate" | "query";
  /** The ServerApp's round (`server-round` in the config; 0 when absent). */
  round: number;
  /** The ConfigRecord as plain values (the run options, `server-round` included). */
  config: Record<string, ConfigValue>;
  /** The ArrayRecord's tensors (the shared tensors), or null if the message carries none. */
  arrays: Map<string, NamedTensor> | null;
  runId: bigint;
  /** Answers with these records; resolves once the SuperLink holds the reply. */
  reply(result: FlowerReply): Promise<void>;
  /** Answer with a Flower Error instead (the ServerApp counts the node as failed this round). */
  fail(reason: string): Promise<void>;
}

/** The SuperLink no longer knows this node, or refused it for good. */
export class FlowerNodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlowerNodeError";
  }
}

/** SuperNode authentication is on and the SuperLink does not know this node's public key. */
export class KeyNotRegisteredError extends FlowerNodeError {
  /** `publicKeyFile`: where the node's public key is, in OpenSSH form, when it is in a file. */
  constructor(publicKeyFile?: string) {
    super(
      "the SuperLink refused this node: SuperNode authentication is on and its public key is " +
        "not registered. Register it (" +
        (publicKeyFile
          ? `flwr supernode register ${publicKeyFile} <connection>`
          : "flwr supernode register <key.pub> <connection>; the key in OpenSSH form comes " +
            "from publicKeyOpenSsh") +
        "), then retry",
    );
    this.name = "KeyNotRegisteredError";
  }
}

const SUPERLINK_NODE_ID = 1n;
/** Error code of a reply the node could not produce (Flower's CLIENT_APP_RAISED_EXCEPTION). */
const ERROR_CODE_NODE_FAILED = 2n;
const OBJECT_WAIT_S = 600;

const sleep = (s: number) => new Promise((r) => setTimeout(r, s * 1000));

export class FlowerNode {
  #closed = false;
  #heartbeatTimer: ReturnType<typeof setTimeout> | undefined;
  #fatal: Error | undefined;
  #wake: (() => void) | undefined;

  private constructor(
    readonly nodeId: bigint,
    readonly superlinkVersion: string,
    private readonly http: FleetHttp,
    private readonly keys: NodeKeys,
    private readonly heartbeatIntervalS: number,
    readonly pollIntervalS: number,
    private readonly unregisterOnClose: boolean,
    private readonly log: (line: string) => void,
  ) {}

  static async connect(opts: FlowerNodeOptions): Promise<FlowerNode> {
    const heartbeat = opts.heartbeatIntervalS ?? 30;
    if (!(heartbeat >= 10 && heartbeat <= 1800)) {
      throw new FlowerNodeError(
        `heartbeat interval ${heartbeat} s is outside the SuperLink's range [10, 1800] s`,
      );
    }
    const log = opts.log ?? ((line: string) => console.error(line));
    const http = new FleetHttp(opts);
    try {
      const version = await http.checkVersion();
      const keys = opts.keys ?? await generateNodeKeys();
      let nodeId: bigint, ephemeral = false;
      if (
        opts.keys && opts.nodeId !== undefined && await resume(http, keys, opts.nodeId, heartbeat)
      ) {
        nodeId = opts.nodeId;
        log(`flower node: took back the session of node ${nodeId}`);
      } else {
        let authOn = false;
        try {
          await http.call("register-node", requests.registerNode(keys.publicPem), keys);
          ephemeral = !opts.keys;
        } catch (e) {
          // A kept identity is registered already; with authentication on, the operator does it.
          if (!(e instanceof FlowerRequestError)) throw e;
          if (e.code === ERROR_CODES.SUPERNODE_REGISTRATION_DISABLED) authOn = true;
          else if (e.code !== ERROR_CODES.PUBLIC_KEY_ALREADY_IN_USE) throw e;
        }
        const returning = opts.keys && (!authOn || opts.nodeId !== undefined);
        const patience = opts.activationPatienceS ?? (returning ? 2 * heartbeat + 5 : 0);
        nodeId = await activate(http, keys, heartbeat, patience, authOn, log);
      }
      const poll = opts.pollIntervalS ?? 1;
      const node = new FlowerNode(nodeId, version, http, keys, heartbeat, poll, ephemeral, log);
      node.#scheduleHeartbeat();
      return node;
    } catch (e) {
      http.close();
      throw e;
    }
  }

  /** The ServerApp's messages, as they come, until `close()`. One left unanswered is failed. */
  async *tasks(): AsyncGenerator<FlowerTask> {
    while (!this.#closed) {
      const task = await this.pull();
      if (!task) {
        await this.pause(this.pollIntervalS);
        continue;
      }
      let answered = false;
      const answer = <A extends unknown[]>(f: (...a: A) => Promise<void>) => (...a: A) => {
        answered = true;
        return f(...a);
      };
      try {
        yield { ...task, reply: answer(task.reply), fail: answer(task.fail) };
      } finally {
        if (!answered && !this.#closed) await task.fail("the comigs node did not answer");
      }
    }
  }

  /**
   * The next message waiting for this node, with its objects (undefined: none; a message of a
   * type comigs does not answer is refused here and gives undefined too).
   */
  async pull(): Promise<FlowerTask | undefined> {
    if (this.#fatal) throw this.#fatal;
    const pulled = decodePullMessages(
      await this.http.call("pull-messages", requests.pullMessages(this.nodeId), this.keys),
    );
    return pulled.length ? await this.#receive(pulled[0]) : undefined;
  }

  /** Waits `seconds` (between polls), or less when the node is closed meanwhile. */
  pause(seconds: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, seconds * 1000);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.#wake = done;
    });
  }

  /** Why run `runId` is over, in the SuperLink's words, or null while it runs. */
  async runOver(runId: bigint): Promise<string | null> {
    try {
      await this.http.call("get-run", requests.getRun(this.nodeId, runId), this.keys);
      return null;
    } catch (e) {
      // Refused (FLEET_RUN_STATUS_NOT_ALLOWED: finished) or unknown to the SuperLink.
      if (e instanceof FlowerRequestError) return e.detail;
      throw e;
    }
  }

  /** Deactivates the node (and unregisters an ephemeral identity). Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#heartbeatTimer);
    this.#wake?.();
    try {
      await this.http.call("deactivate-node", requests.deactivateNode(this.nodeId), this.keys);
      if (this.unregisterOnClose) {
        await this.http.call("unregister-node", requests.unregisterNode(this.nodeId), this.keys);
      }
    } catch (e) {
      // Leaving anyway: the SuperLink marks the node offline after 2 heartbeat intervals.
      this.log(`flower node: could not sign off cleanly (${(e as Error).message})`);
    } finally {
      this.http.close();
    }
  }

  #scheduleHeartbeat(): void {
    // Twice per interval: the SuperLink keeps the node online for 2 intervals after each beat.
    this.#heartbeatTimer = setTimeout(async () => {
      if (this.#closed) return;
      try {
        const ok = decodeHeartbeatResponse(
          await this.http.call(
            "send-node-heartbeat",
            requests.sendNodeHeartbeat(this.nodeId, this.heartbeatIntervalS),
            this.keys,
          ),
        );
        if (!ok) {
          this.#fatal = new FlowerNodeError(
            `the SuperLink no longer knows node ${this.nodeId} (it was unregistered)`,
          );
        }
      } catch (e) {
        if (e instanceof FlowerConnectionError || e instanceof FlowerRequestError) {
          this.log(`flower node: heartbeat failed (${e.message})`);
        } else this.#fatal = e as Error;
      }
      if (!this.#closed && !this.#fatal) this.#scheduleHeartbeat();
    }, (this.heartbeatIntervalS / 2) * 1000);
  }

  /** Pulls a message's objects, confirms it, and makes the task (or answers what we don't do). */
  async #receive({ message, tree }: PulledMessage): Promise<FlowerTask | undefined> {
    const received = Date.now();
    const ins = message.metadata;
    const objects = new Map<string, ParsedObject>();
    const ids: string[] = [];
    const walk = (t: typeof tree) => (t.children.forEach(walk), ids.push(t.objectId));
    walk(tree);
    for (const id of new Set(ids)) objects.set(id, await this.#pullObject(ins.runId, id));
    await this.http.call(
      "confirm-message-received",
      requests.confirmMessageReceived(this.nodeId, ins.runId, ins.messageId),
      this.keys,
    );
    const send = (content: FlowerObject | null, error?: MessageError) =>
      this.#reply(ins, content, error, (Date.now() - received) / 1000);
    const fail = (reason: string) => send(null, { code: ERROR_CODE_NODE_FAILED, reason });

    const kind = ins.messageType;
    if (kind !== "train" && kind !== "evaluate" && kind !== "query") {
      await fail(`comigs nodes answer train, evaluate and query messages, not "${kind}"`);
      return undefined;
    }
    const root = objects.get(ins.messageId);
    const contentId = root?.childIds[0];
    if (message.error || !contentId) {
      await fail(`the ${kind} message carries no content`);
      return undefined;
    }
    const records = inflateRecordDict(contentId, objects);
    const config: Record<string, ConfigValue> = {};
    let arrays: Map<string, NamedTensor> | null = null;
    for (const record of records.values()) {
      if (record.kind === "config") Object.assign(config, Object.fromEntries(record.values));
      else if (record.kind === "arrays") arrays = new Map([...(arrays ?? []), ...record.arrays]);
    }
    return {
      kind,
      round: Number(config["server-round"] ?? 0),
      config,
      arrays,
      runId: ins.runId,
      reply: async (result) => await send(await replyContent(replyRecords(result))),
      fail,
    };
  }

  async #pullObject(runId: bigint, id: string): Promise<ParsedObject> {
    const start = Date.now();
    for (;;) {
      const res = decodePullObject(
        await this.http.call("pull-object", requests.pullObject(this.nodeId, runId, id), this.keys),
      );
      if (res.available) return await parseObject(id, res.content);
      if (!res.found) {
        throw new FlowerNodeError(`object ${id} of run ${runId} is not on the SuperLink`);
      }
      // Pre-registered but still being uploaded by the ServerApp.
      if ((Date.now() - start) / 1000 > OBJECT_WAIT_S) {
        throw new FlowerNodeError(`object ${id} of run ${runId} never became available`);
      }
      await sleep(0.1);
    }
  }

  async #reply(
    ins: Metadata,
    content: FlowerObject | null,
    error: MessageError | undefined,
    runtimeS: number,
  ): Promise<void> {
    const now = Date.now() / 1000;
    const metadata: Metadata = {
      runId: ins.runId,
      messageId: "",
      srcNodeId: this.nodeId,
      dstNodeId: ins.srcNodeId || SUPERLINK_NODE_ID,
      replyToMessageId: ins.messageId,
      groupId: ins.groupId,
      // A reply may live no longer than the message it answers (Flower's _limit_reply_ttl).
      ttl: ins.createdAt + ins.ttl - now,
      messageType: ins.messageType,
      createdAt: now,
      srcTaskId: ins.dstTaskId,
      dstTaskId: ins.srcTaskId,
    };
    const root = await messageObject(metadata, content, error);
    let pushed;
    try {
      pushed = decodePushMessages(
        await this.http.call(
          "push-messages",
          requests.pushMessages(
            this.nodeId,
            { metadata: { ...metadata, messageId: root.id }, hasContent: content !== null, error },
            objectTree(root),
            runtimeS,
          ),
          this.keys,
        ),
      );
    } catch (e) {
      if (e instanceof FlowerRequestError && e.code === ERROR_CODES.RUN_STATUS_NOT_ALLOWED) {
        this.log(`flower node: run ${ins.runId} has ended; its reply is dropped`);
        return;
      }
      throw e;
    }
    const toPush = new Set(pushed.toPush);
    for (const o of postOrder(root)) {
      if (!toPush.has(o.id)) continue;
      toPush.delete(o.id);
      const stored = decodePushObject(
        await this.http.call(
          "push-object",
          requests.pushObject(this.nodeId, ins.runId, o.id, o.content, pushed.sessionId),
          this.keys,
        ),
      );
      if (!stored) throw new FlowerNodeError(`the SuperLink did not store object ${o.id}`);
    }
  }
}

async function activate(
  http: FleetHttp,
  keys: NodeKeys,
  heartbeat: number,
  patienceS: number,
  authOn: boolean,
  log: (line: string) => void,
): Promise<bigint> {
  const start = Date.now();
  for (;;) {
    try {
      return decodeNodeId(
        await http.call("activate-node", requests.activateNode(keys.publicPem, heartbeat), keys),
        "ActivateNodeResponse",
      );
    } catch (e) {
      if (!(e instanceof FlowerRequestError) || e.code !== ERROR_CODES.NODE_ACTIVATION_FAILED) {
        throw e;
      }
      if ((Date.now() - start) / 1000 + 2 > patienceS) {
        if (authOn) throw new KeyNotRegisteredError();
        throw new FlowerNodeError(
          "the SuperLink refused to activate this node: a previous session of this " +
            "identity is still marked online (it lapses 2 heartbeat intervals after its " +
            "last heartbeat); retry later",
        );
      }
      log(
        "flower node: activation refused (a previous session of this node may still be " +
          "online); retrying in 2 s",
      );
      await sleep(2);
    }
  }
}

/** A reply's records as Flower values (see FlowerReply), checked. */
function replyRecords({ arrays, metrics, config }: FlowerReply): ReplyRecords {
  const metricValues = metrics && new Map<string, MetricValue>(
    Object.entries(metrics).map(([key, value]) => {
      if (key !== "num-examples") return [key, value];
      if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
        throw new FlowerNodeError(`metric num-examples must be a count, got ${value}`);
      }
      return [key, { int: BigInt(value) }];
    }),
  );
  const configValues = config && new Map<string, ConfigOut>(
    Object.entries(config).map(([key, value]) => {
      if (typeof value !== "number") return [key, value];
      if (!Number.isSafeInteger(value)) {
        throw new FlowerNodeError(`config ${key} must be an integer, got ${value}`);
      }
      return [key, { int: BigInt(value) }];
    }),
  );
  return { arrays, metrics: metricValues, config: configValues };
}

/** Takes back the session of `nodeId` with a heartbeat; false when the SuperLink refuses it. */
async function resume(
  http: FleetHttp,
  keys: NodeKeys,
  nodeId: bigint,
  heartbeat: number,
): Promise<boolean> {
  try {
    return decodeHeartbeatResponse(
      await http.call("send-node-heartbeat", requests.sendNodeHeartbeat(nodeId, heartbeat), keys),
    );
  } catch (e) {
    // 401: the id is not this key's node (a SuperLink started afresh numbers nodes anew).
    if (e instanceof FlowerRequestError) return false;
    throw e;
  }
}
