// Our own server of a federation across processes or machines (devices). The server (`deno task serve`) holds the
// strategy and the run folder, never a model weight or a token; each client (`deno task join`)
// holds its own data, model, experts, router and optimiser states, and its own state file. They
// exchange exactly what the simulation passes between Client and Strategy (encoded Messages)
// plus losses, over HTTP, driven by the same runRounds, so a networked run ends with the same
// bits as the simulated one.
//
// Clients pull, so they may sit behind NAT or in a browser: a client joins, long-polls for its
// task (evaluate, fit or done), answers it, and polls again. A task stays pending until it is
// answered, so a client that restarts gets it again; a client saves its state after every fit,
// keeping the one before too, so a fit the server never received is redone from the state
// before it, with the same bits. The server saves its state after every round (fed/run.ts's
// resume.safetensors, with no client inside) and continues with `--resume`; polling clients
// rejoin by themselves.
//
//   GET  /run                  RunInfo (JSON)
//   POST /join?client=i        Join (JSON, with the client's credential once it has one)
//                              → {session, credential}: the first join of an id gets the id's
//                              credential; later joins of that id must show it (403 otherwise)
//   GET  /task?client=i&session=s    204 (nothing yet, poll again) or 200: header x-comigs-task
//                              (WireTask JSON), body the server's message (empty: none)
//   POST /progress?client=i&session=s   a StepReport (JSON), for the server's progress bar
//   POST /reply?client=i&session=s      header x-comigs-reply (Reply JSON), body a fit's message
import type { StepReport } from "./client.ts";
import type { ClientEndpoint, EvaluateReply, FitReply } from "./endpoint.ts";
import type { TrainOptions } from "./options.ts";
import type { Join, Reply } from "./server_link.ts";
import type { BaseConfig } from "../model/base.ts";

/** What a client learns from GET /run. */
export interface RunInfo {
  options: TrainOptions;
  /** The base model's config on the server: the client's must be the same. */
  base: BaseConfig;
  /** Whether the server still needs the frozen base's test perplexity (not on a resumed run). */
  needPretrained: boolean;
}

/** The task as it travels: its body carries the parameters, when it has any. */
export type WireTask =
  | { kind: "fit"; round: number; steps: number; hasParameters: boolean }
  | { kind: "evaluate"; round: number; hasParameters: boolean }
  | { kind: "done" };

/** How long a task poll is held open before it answers 204. */
const POLL_MS = 20_000;

/** A client's answer to a task: its reply and, for a fit, its message. */
interface Answer {
  reply: Reply;
  body: Uint8Array;
}

interface Pending {
  task: WireTask;
  body: Uint8Array<ArrayBuffer>;
  /** With the answer, or null for "done" once it is handed out (it needs none). */
  resolve(answer: Answer | null): void;
  reject(error: Error): void;
}

/** The server's view of client `id`: tasks it hands out and the replies it waits for. */
export class RemoteEndpoint implements ClientEndpoint {
  /** Its category's name and training tokens, as it said when joining (for summary.json). */
  name: string;
  trainTokens = 0;
  session: string | null = null;
  #pending: Pending | null = null;
  #poll: (() => void) | null = null;
  #onStep: ((report: StepReport) => void) | null = null;
  #joined!: (pretrainedPpl: number | null) => void;
  /** Resolves with the client's base perplexity (null when the server did not ask) on its
   * first join. */
  readonly joined = new Promise<number | null>((resolve) => this.#joined = resolve);

  constructor(
    readonly id: number,
    /** The SHA-256 (hex) of the credential this id was given on its first join, if it was. */
    public credentialHash: string | null = null,
  ) {
    this.name = `client ${id}`;
  }

  /**
   * A client's join: the first one of this id is given its credential; a later one (the same
   * device restarted) must show it, so nobody else can take the id over.
   */
  async join(
    { name, trainTokens, pretrainedPpl, credential }: Join,
  ): Promise<{ session: string; credential: string }> {
    if (this.credentialHash === null) {
      credential = crypto.randomUUID();
      this.credentialHash = await sha256Hex(credential);
    } else if (!credential || await sha256Hex(credential) !== this.credentialHash) {
      throw new Forbidden(
        `client ${this.id} has joined with its credential before; only that device (the ` +
          `credential in its folder) may join as it again`,
      );
    }
    this.name = name;
    this.trainTokens = trainTokens;
    this.session = crypto.randomUUID();
    this.#joined(pretrainedPpl);
    return { session: this.session, credential };
  }

  fit(
    round: number,
    steps: number,
    parameters: Uint8Array | null,
    onStep: (report: StepReport) => void,
  ): Promise<FitReply> {
    this.#onStep = onStep;
    return this.#ask({ kind: "fit", round, steps, hasParameters: !!parameters }, parameters)
      .then((answer) => {
        this.#onStep = null;
        const { reply, body } = answer!;
        if (reply.kind !== "fit" || reply.round !== round) throw this.#unexpected(reply);
        return { result: body, step: reply.step, meanLoss: reply.meanLoss };
      });
  }

  async evaluate(round: number, parameters: Uint8Array | null): Promise<EvaluateReply> {
    const { reply } = (await this.#ask(
      { kind: "evaluate", round, hasParameters: !!parameters },
      parameters,
    ))!;
    if (reply.kind !== "evaluate" || reply.round !== round) throw this.#unexpected(reply);
    return { step: reply.step, losses: reply.losses };
  }

  /** Tells the client the run is over; resolves once it has taken the news. */
  async finish(): Promise<void> {
    await this.#ask({ kind: "done" }, null);
  }

  /** The pending task for a poll, waiting up to POLL_MS for one (null: none). */
  async next(): Promise<Pending | null> {
    if (!this.#pending) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.#poll = null;
          resolve();
        }, POLL_MS);
        this.#poll = () => {
          clearTimeout(timer);
          this.#poll = null;
          resolve();
        };
      });
    }
    const pending = this.#pending;
    // "done" needs no answer: handing it out settles it.
    if (pending?.task.kind === "done") {
      this.#pending = null;
      pending.resolve(null);
    }
    return pending;
  }

  progress(report: StepReport): void {
    this.#onStep?.(report);
  }

  answer(reply: Reply, body: Uint8Array): void {
    const pending = this.#pending;
    if (!pending) throw new Error(`client ${this.id} answered, but no task was pending`);
    this.#pending = null;
    if (reply.kind === "error") pending.reject(new Error(`client ${this.id}: ${reply.message}`));
    else pending.resolve({ reply, body });
  }

  /** Ends a pending task with `error` and answers a waiting poll (the server is stopping). */
  abandon(error: Error): void {
    this.#pending?.reject(error);
    this.#pending = null;
    this.#poll?.();
  }

  #ask(task: WireTask, parameters: Uint8Array | null) {
    if (this.#pending) throw new Error(`client ${this.id} already has a task`);
    return new Promise<Answer | null>((resolve, reject) => {
      const body = new Uint8Array(parameters ?? new Uint8Array());
      this.#pending = { task, body, resolve, reject };
      this.#poll?.();
    });
  }

  #unexpected(reply: Reply): Error {
    return new Error(`client ${this.id} answered ${JSON.stringify(reply)} out of turn`);
  }
}

/** Browser tabs may be clients (`deno task browser --join`), from pages of another origin. */
const CORS = {
  "access-control-allow-origin": "*",
  "access-control-expose-headers": "x-comigs-task",
};
const PREFLIGHT = {
  "access-control-allow-methods": "GET, POST",
  "access-control-allow-headers": "x-comigs-reply, content-type",
};

/** A join the server refuses (an id taken by another device). */
class Forbidden extends Error {}

async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The HTTP handler of a server whose clients are `endpoints`; `onCredential` keeps a client's
 * credential hash once it has one (the run folder's, so a resumed server still knows it).
 */
export function serverHandler(
  info: () => RunInfo,
  endpoints: readonly RemoteEndpoint[],
  onCredential: (client: number, hash: string) => Promise<void> = () => Promise.resolve(),
): (request: Request) => Promise<Response> {
  const text = (status: number, message: string) => new Response(message, { status });
  return async (request) => {
    const response = request.method === "OPTIONS"
      ? new Response(null, { status: 204, headers: PREFLIGHT })
      : await handle(request).catch((e: Error) => text(400, `bad request: ${e.message}`));
    for (const [name, value] of Object.entries(CORS)) response.headers.set(name, value);
    return response;
  };
  async function handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    if (request.method === "GET" && url.pathname === "/run") return Response.json(info());
    const raw = url.searchParams.get("client");
    const id = Number(raw);
    if (raw === null || !/^\d+$/.test(raw) || id >= endpoints.length) {
      return text(
        400,
        `client must be an id in 0..${endpoints.length - 1}, got ${raw === null ? "none" : raw}`,
      );
    }
    const endpoint = endpoints[id];
    if (request.method === "POST" && url.pathname === "/join") {
      const join = await request.json() as Join;
      if (info().needPretrained && !(typeof join.pretrainedPpl === "number")) {
        return text(400, "the server needs the base model's test perplexity (pretrainedPpl)");
      }
      try {
        const joined = await endpoint.join(join);
        await onCredential(id, endpoint.credentialHash!);
        return Response.json(joined);
      } catch (e) {
        if (e instanceof Forbidden) return text(403, e.message);
        throw e;
      }
    }
    const session = url.searchParams.get("session");
    if (!endpoint.session) return text(401, `client ${id} has not joined this server`);
    if (session !== endpoint.session) {
      return text(409, `another process joined as client ${id} after this one`);
    }
    if (request.method === "GET" && url.pathname === "/task") {
      const pending = await endpoint.next();
      if (!pending) return new Response(null, { status: 204 });
      return new Response(pending.body.slice(), {
        headers: { "x-comigs-task": JSON.stringify(pending.task) },
      });
    }
    if (request.method === "POST" && url.pathname === "/progress") {
      endpoint.progress(await request.json() as StepReport);
      return text(200, "ok");
    }
    if (request.method === "POST" && url.pathname === "/reply") {
      const reply = JSON.parse(request.headers.get("x-comigs-reply") ?? "null") as Reply | null;
      if (!reply) return text(400, "a reply needs its x-comigs-reply header");
      try {
        endpoint.answer(reply, new Uint8Array(await request.arrayBuffer()));
      } catch (e) {
        return text(409, (e as Error).message);
      }
      return text(200, "ok");
    }
    return text(404, `no ${request.method} ${url.pathname}`);
  }
}
