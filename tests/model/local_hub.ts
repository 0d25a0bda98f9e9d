// A real HTTP server on 127.0.0.1 that answers as huggingface.co does for what downloads need:
// - GET /api/models/{repo}/revision/{revision}?blobs=true: {sha, siblings: [{rfilename, size,
//   blobId, lfs?: {sha256, size, pointerSize}}]}
// - GET /{repo}/resolve/{revision}/{file}: small files directly (Range honoured); LFS files as a
//   302 to a second server (another origin, like the Hub's storage) with X-Linked-Etag,
//   X-Linked-Size and X-Repo-Commit headers
// - errors as the Hub sends them: 401/403/404 with X-Error-Code (RepoNotFound, RevisionNotFound,
//   EntryNotFound, GatedRepo).
// The storage server refuses requests carrying Authorization (signed URLs refuse a second
// credential). Tests can make it cut a response short or serve corrupted bytes.
import { createHash } from "node:crypto";

export interface LocalRepo {
  /** revision name → commit; each commit → its files. */
  refs: Map<string, string>;
  commits: Map<string, Map<string, Uint8Array>>;
  /** Files stored with LFS (redirected to storage). */
  lfs: Set<string>;
  /** "private": 401 without a valid token; "gated": 403 for a valid token without access. */
  access?: "private" | "gated";
}

export interface LoggedRequest {
  server: "hub" | "storage";
  path: string;
  range: string | null;
  authorization: string | null;
}

export const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");
export const gitSha1 = (bytes: Uint8Array) =>
  createHash("sha1").update(`blob ${bytes.length}\0`).update(bytes).digest("hex");

export class LocalHub {
  readonly repos = new Map<string, LocalRepo>();
  readonly log: LoggedRequest[] = [];
  /** The token that has access to private repos ("gated" repos refuse it). */
  token = "hf_valid";
  /** Storage cuts the next responses for this sha256 after `bytes` bytes, `times` times. */
  cut: { sha256: string; bytes: number; times: number } | undefined;
  /** Storage (and the Hub, for small files) serves these bytes instead for the given path. */
  corrupt = new Map<string, Uint8Array>();

  #hub = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (r) => this.#serveHub(r));
  #storage = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (r) => this.#serveStorage(r),
  );
  #blobs = new Map<string, Uint8Array>();

  get endpoint(): string {
    return `http://127.0.0.1:${this.#hub.addr.port}`;
  }

  addRepo(name: string, repo: LocalRepo): void {
    this.repos.set(name, repo);
    for (const files of repo.commits.values()) {
      for (const bytes of files.values()) this.#blobs.set(sha256(bytes), bytes);
    }
  }

  async close(): Promise<void> {
    await Promise.all([this.#hub.shutdown(), this.#storage.shutdown()]);
  }

  #record(server: "hub" | "storage", request: Request): URL {
    const url = new URL(request.url);
    this.log.push({
      server,
      path: url.pathname,
      range: request.headers.get("Range"),
      authorization: request.headers.get("Authorization"),
    });
    return url;
  }

  #serveHub(request: Request): Response {
    const url = this.#record("hub", request);
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const [, name, revision, file] = api ?? resolve ?? [];
    const repo = name ? this.repos.get(name) : undefined;
    const auth = request.headers.get("Authorization");
    if (!repo) return error(404, "RepoNotFound");
    if (repo.access && auth !== `Bearer ${this.token}`) return error(401, "RepoNotFound");
    if (repo.access === "gated") return error(403, "GatedRepo");
    const commit = repo.commits.has(revision)
      ? revision
      : repo.refs.get(decodeURIComponent(revision));
    const files = commit ? repo.commits.get(commit) : undefined;
    if (!commit || !files) return error(404, "RevisionNotFound");
    if (api) {
      if (url.searchParams.get("blobs") !== "true") {
        return new Response("want blobs", { status: 400 });
      }
      const siblings = [...files].map(([rfilename, bytes]) => ({
        rfilename,
        size: repo.lfs.has(rfilename) ? 134 : bytes.length,
        blobId: repo.lfs.has(rfilename)
          ? gitSha1(new TextEncoder().encode("pointer"))
          : gitSha1(bytes),
        ...(repo.lfs.has(rfilename)
          ? { lfs: { sha256: sha256(bytes), size: bytes.length, pointerSize: 134 } }
          : {}),
      }));
      return Response.json({ id: name, sha: commit, siblings });
    }
    const bytes = files.get(file);
    if (!bytes) return error(404, "EntryNotFound");
    const headers = { "X-Repo-Commit": commit };
    if (repo.lfs.has(file)) {
      const storage = `http://127.0.0.1:${this.#storage.addr.port}/${sha256(bytes)}?signed=1`;
      return new Response(null, {
        status: 302,
        headers: {
          ...headers,
          Location: storage,
          "X-Linked-Etag": `"${sha256(bytes)}"`,
          "X-Linked-Size": String(bytes.length),
        },
      });
    }
    return ranged(request, this.corrupt.get(url.pathname) ?? bytes, headers);
  }

  #serveStorage(request: Request): Response {
    const url = this.#record("storage", request);
    if (request.headers.has("Authorization")) {
      return new Response("Only one auth mechanism allowed", { status: 400 });
    }
    const hash = url.pathname.slice(1);
    const bytes = this.corrupt.get(url.pathname) ?? this.#blobs.get(hash);
    if (!bytes || url.searchParams.get("signed") !== "1") {
      return new Response(null, { status: 403 });
    }
    const cut = this.cut;
    if (cut && cut.sha256 === hash && cut.times > 0) {
      cut.times--;
      return ranged(request, bytes, {}, cut.bytes);
    }
    return ranged(request, bytes, {});
  }
}

function error(status: number, code: string): Response {
  return new Response(JSON.stringify({ error: code }), {
    status,
    headers: { "X-Error-Code": code, "Content-Type": "application/json" },
  });
}

/** The bytes (from a `Range: bytes=N-` start), optionally breaking the connection after `cut`. */
function ranged(
  request: Request,
  bytes: Uint8Array,
  headers: Record<string, string>,
  cut?: number,
): Response {
  const start = Number(/^bytes=(\d+)-$/.exec(request.headers.get("Range") ?? "")?.[1] ?? 0);
  if (start >= bytes.length && start > 0) return new Response(null, { status: 416 });
  const part = bytes.subarray(start);
  const status = start > 0 ? 206 : 200;
  const all = {
    ...headers,
    "Content-Length": String(part.length),
    ...(start > 0 ? { "Content-Range": `bytes ${start}-${bytes.length - 1}/${bytes.length}` } : {}),
  };
  if (cut === undefined) return new Response(part.slice(), { status, headers: all });
  // The first bytes go out, then the body ends short of its Content-Length: the connection
  // closes mid-response, as a dropped network does.
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      controller.enqueue(part.slice(0, cut));
      await new Promise((resolve) => setTimeout(resolve, 20));
      controller.close();
    },
  });
  return new Response(body, { status, headers: all });
}
