// The client's side of our own HTTP transport (fed/http_server.ts has the protocol): join, poll
// for tasks, answer them, with nothing but fetch, so a Deno process and a browser tab use it.
// An unreachable server is retried for a while (it may be restarting); a server that forgot this
// client (restarted with --resume) is joined again.
import type { Progress } from "../model/progress.ts";
import type { StepReport } from "./client.ts";
import type { RunInfo, WireTask } from "./http_server.ts";
import type { Join, Reply, ServerLink, Task } from "./server_link.ts";

/** How long a client keeps retrying an unreachable server before it gives up. */
const UNREACHABLE_S = 600;

/** The run's options and base config from the server at `server`. */
export function runInfo(server: string, progress: Progress): Promise<RunInfo> {
  return request<RunInfo>(server, "/run", {}, progress);
}

/** Where a client keeps the credential the server gave its id (its folder, or memory). */
export interface CredentialStore {
  load(): Promise<string | null>;
  save(credential: string): Promise<void>;
}

/** A CredentialStore in memory (a browser tab). */
export function memoryCredential(): CredentialStore {
  let kept: string | null = null;
  return {
    load: () => Promise.resolve(kept),
    save: (credential) => Promise.resolve(void (kept = credential)),
  };
}

/** Client `id` of the run served at `server`. */
export class HttpServerLink implements ServerLink {
  #session: string | null = null;
  #hello: ((needPretrained: boolean) => Promise<Join>) | null = null;
  #reports: Promise<void> = Promise.resolve();

  constructor(
    readonly server: string,
    readonly id: number,
    readonly progressDisplay: Progress,
    readonly credentials: CredentialStore = memoryCredential(),
  ) {}

  async join(hello: (needPretrained: boolean) => Promise<Join>): Promise<void> {
    this.#hello = hello;
    const { needPretrained } = await runInfo(this.server, this.progressDisplay);
    const credential = await this.credentials.load() ?? undefined;
    const joined = await request<{ session: string; credential: string }>(
      this.server,
      `/join?client=${this.id}`,
      { method: "POST", body: JSON.stringify({ ...await hello(needPretrained), credential }) },
      this.progressDisplay,
    );
    if (joined.credential !== credential) await this.credentials.save(joined.credential);
    this.#session = joined.session;
  }

  async nextTask(): Promise<Task> {
    while (true) {
      const response = await fetchRetrying(
        this.server,
        this.#at("/task"),
        {},
        this.progressDisplay,
      );
      if (response.status === 204) continue;
      if (response.status === 401) {
        // The server restarted (--resume): join it again.
        await response.body?.cancel();
        await this.join(this.#hello!);
        continue;
      }
      if (!response.ok) throw new Error(`server: ${response.status} ${await response.text()}`);
      const task = JSON.parse(response.headers.get("x-comigs-task")!) as WireTask;
      const body = new Uint8Array(await response.arrayBuffer());
      if (task.kind === "done") return task;
      const { hasParameters, ...rest } = task;
      return { ...rest, parameters: hasParameters ? body : null };
    }
  }

  async reply(reply: Reply, result = new Uint8Array()): Promise<void> {
    // Progress posts go first: the server's display shows the fit's steps before its end.
    await this.#reports;
    await post(this.server, this.#at("/reply"), new Uint8Array(result), reply);
  }

  progress(report: StepReport): void {
    this.#reports = this.#reports.then(() =>
      post(this.server, this.#at("/progress"), JSON.stringify(report)).catch(() => {})
    );
  }

  #at(path: string): string {
    return `${path}?client=${this.id}&session=${this.#session}`;
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
