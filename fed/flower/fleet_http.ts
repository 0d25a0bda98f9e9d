// The Fleet API over HTTP (flwr ≥ 1.40; here 1.42.0): `POST /v1/fleet/<route>` on the
// SuperLink's one port, protobuf request and response bodies ("application/protobuf"), every
// request signed by the node's key (node_keys.ts) and tagged with the runtime-version headers
// Flower's own SuperNode sends. Errors come back as JSON `{code, detail}`. Only `fetch` (plus
// `Deno.createHttpClient` for a private CA), so the node also runs in a browser tab behind a
// relay that adds CORS headers (the SuperLink sends none).

import { type NodeKeys, signedHeaders } from "./node_keys.ts";
import { checkSuperLinkVersion, FlowerVersionError, FLWR_VERSION } from "./version.ts";

/** The SuperLink could not be reached (after retrying as long as allowed), or TLS failed. */
export class FlowerConnectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlowerConnectionError";
  }
}

/** The SuperLink answered a request with an error (Flower's error code and public message). */
export class FlowerRequestError extends Error {
  constructor(
    readonly route: string,
    readonly status: number,
    readonly code: number | undefined,
    readonly detail: string,
  ) {
    super(`SuperLink refused ${route}: ${detail} (HTTP ${status}${code ? `, code ${code}` : ""})`);
    this.name = "FlowerRequestError";
  }
}

/** Flower's ApiErrorCode values the node acts on (flwr/supercore/error/base.py). */
export const ERROR_CODES = {
  PUBLIC_KEY_ALREADY_IN_USE: 23,
  RUNTIME_VERSION_INCOMPATIBLE: 1001,
  SUPERNODE_REGISTRATION_DISABLED: 2001,
  SUPERNODE_UNREGISTRATION_DISABLED: 2002,
  NODE_ACTIVATION_FAILED: 2004,
  RUN_STATUS_NOT_ALLOWED: 2007,
} as const;

export interface RetryPolicy {
  /** How long to keep retrying an unreachable SuperLink before giving up (seconds). */
  maxWaitS: number;
  initialDelayS: number;
  maxDelayS: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxWaitS: 600, initialDelayS: 1, maxDelayS: 30 };

export interface FleetHttpOptions {
  /** The SuperLink's base URL: http://host:port (insecure) or https://host:port (TLS). */
  superlink: string;
  /** PEM of the CA that signed the SuperLink's certificate (Deno only; browsers use theirs). */
  caCert?: string;
  retry?: Partial<RetryPolicy>;
  /** Where retry notices go (default: console.error). */
  log?: (line: string) => void;
}

const PROTOBUF = "application/protobuf";
const RETRY_STATUSES = new Set([502, 503, 504]);

export class FleetHttp {
  readonly base: string;
  readonly retry: RetryPolicy;
  readonly #init: RequestInit;
  readonly #log: (line: string) => void;
  readonly #close: () => void;

  constructor(opts: FleetHttpOptions) {
    let url: URL;
    try {
      url = new URL(opts.superlink);
    } catch {
      throw new FlowerConnectionError(
        `--superlink ${JSON.stringify(opts.superlink)} is not a URL; give http://HOST:PORT ` +
          `(SuperLink started with --insecure) or https://HOST:PORT (TLS)`,
      );
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new FlowerConnectionError(`--superlink ${opts.superlink}: use http:// or https://`);
    }
    this.base = url.origin;
    this.retry = { ...DEFAULT_RETRY, ...opts.retry };
    this.#log = opts.log ?? ((line) => console.error(line));
    this.#init = {};
    this.#close = () => {};
    if (opts.caCert !== undefined) {
      if (url.protocol !== "https:") {
        throw new FlowerConnectionError(`a CA certificate was given but ${this.base} is not https`);
      }
      const deno = (globalThis as { Deno?: typeof Deno }).Deno;
      if (!deno?.createHttpClient) {
        throw new FlowerConnectionError(
          "a custom CA certificate needs Deno (Deno.createHttpClient); in a browser the " +
            "SuperLink (or its relay) needs a certificate the browser already trusts",
        );
      }
      const client = deno.createHttpClient({ caCerts: [opts.caCert] });
      Object.assign(this.#init, { client });
      this.#close = () => client.close();
    }
  }

  close(): void {
    this.#close();
  }

  /** GET /openapi.json: the SuperLink names its flwr version there; refuse another release. */
  async checkVersion(): Promise<string> {
    const res = await this.#fetch(
      "version check",
      () => fetch(`${this.base}/openapi.json`, { ...this.#init }),
    );
    const text = await res.text();
    let info: { title?: unknown; version?: unknown } | undefined;
    try {
      info = JSON.parse(text).info;
    } catch { /* handled below */ }
    if (!res.ok || info?.title !== "SuperLink API" || typeof info.version !== "string") {
      throw new FlowerVersionError(
        `${this.base} does not answer like a flwr ${FLWR_VERSION} SuperLink (GET /openapi.json: ` +
          `HTTP ${res.status}); this node speaks the HTTP Fleet API of flwr ${FLWR_VERSION}`,
      );
    }
    checkSuperLinkVersion(info.version, this.base);
    return info.version;
  }

  /** One Fleet RPC: retried while the SuperLink is unreachable, refused errors thrown. */
  async call(route: string, body: Uint8Array, keys: NodeKeys): Promise<Uint8Array> {
    const res = await this.#fetch(route, async () =>
      fetch(`${this.base}/v1/fleet/${route}`, {
        ...this.#init,
        method: "POST",
        headers: {
          "content-type": PROTOBUF,
          accept: PROTOBUF,
          "flwr-package-name": "flwr",
          "flwr-package-version": FLWR_VERSION,
          "flwr-component-name": "SuperNode",
          ...(await signedHeaders(keys)),
        },
        body: body as Uint8Array<ArrayBuffer>,
      }));
    const bytes = new Uint8Array(await res.arrayBuffer());
    if (res.ok) return bytes;
    let code: number | undefined;
    let detail = new TextDecoder().decode(bytes).slice(0, 500);
    try {
      const json = JSON.parse(detail);
      code = typeof json.code === "number" ? json.code : undefined;
      detail = [json.detail, json.extra].filter((x) => typeof x === "string").join(" ") || detail;
    } catch { /* not JSON: keep the text */ }
    if (res.status === 404) {
      throw new FlowerVersionError(
        `${this.base} has no Fleet route /v1/fleet/${route}: it does not speak the HTTP Fleet ` +
          `API of flwr ${FLWR_VERSION}`,
      );
    }
    if (code === ERROR_CODES.RUNTIME_VERSION_INCOMPATIBLE) {
      throw new FlowerVersionError(`${detail} (this node speaks flwr ${FLWR_VERSION})`);
    }
    throw new FlowerRequestError(route, res.status, code, detail);
  }

  /** fetch with back-off while the SuperLink is unreachable (or answers 502/503/504). */
  async #fetch(what: string, send: () => Promise<Response>): Promise<Response> {
    const start = Date.now();
    let delay = this.retry.initialDelayS;
    for (let attempt = 1;; attempt++) {
      let problem: string;
      try {
        const res = await send();
        if (!RETRY_STATUSES.has(res.status)) return res;
        await res.body?.cancel();
        problem = `HTTP ${res.status}`;
      } catch (e) {
        problem = describe(e);
        if (/certificate|tls|ssl|handshake/i.test(problem)) {
          throw new FlowerConnectionError(
            `TLS to the SuperLink at ${this.base} failed: ${problem}. Pass the CA certificate ` +
              `that signed the SuperLink's certificate (--ca-cert), and use the host name or IP ` +
              `the certificate names`,
          );
        }
      }
      const waited = (Date.now() - start) / 1000;
      if (waited + delay > this.retry.maxWaitS) {
        throw new FlowerConnectionError(
          `the SuperLink at ${this.base} is unreachable (${what}: ${problem}); gave up after ` +
            `${attempt} attempts in ${waited.toFixed(0)} s. Check that flower-superlink runs ` +
            `and listens on that address (its --host/--port; http:// with --insecure)`,
        );
      }
      this.#log(
        `flower node: SuperLink at ${this.base} unreachable (${what}: ${problem}); ` +
          `retrying in ${delay} s (attempt ${attempt})`,
      );
      await new Promise((r) => setTimeout(r, delay * 1000));
      delay = Math.min(delay * 2, this.retry.maxDelayS);
    }
  }
}

/** An error and its causes in one line (Deno's fetch says "fetch failed"; the cause says why). */
function describe(e: unknown): string {
  const parts: string[] = [];
  for (let c: unknown = e; c !== undefined && parts.length < 4; c = (c as Error).cause) {
    parts.push(c instanceof Error ? c.message : String(c));
    if (!(c instanceof Error)) break;
  }
  return parts.join(": ");
}
