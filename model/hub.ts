// `hf:ORG/NAME[@REVISION]`: a Llama-family model from the Hugging Face Hub into the local cache
// (hub_cache.ts has the layout), returning its snapshot folder: config.json, model.safetensors or
// the index and its shards, tokenizer.json and, when the repository has it, tokenizer_config.json.
// - One API call, GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true (huggingface_hub's
//   model_info with files_metadata), resolves the revision to a commit and lists every file with
//   its size and hash: `lfs.sha256` for LFS files, `blobId` (git's sha1 of "blob {size}\0" + bytes)
//   for the rest. Files then come from {endpoint}/{repo}/resolve/{commit}/{file}, so all belong to
//   one commit even if the branch moves meanwhile.
// - The Hub answers LFS files with a redirect to a storage host, which must not get the token
//   (signed storage URLs refuse a second credential, and the token must not leak): fetch drops
//   Authorization on cross-origin redirects, as the Fetch standard says.
// - Each file streams into blobs/{hash}.incomplete; a connection lost mid-file is resumed with an
//   HTTP Range request (also across runs: a partial file left by an interrupted run is continued).
//   Complete, it is hashed; one whose size or hash disagrees with the Hub is deleted.
// - Offline (option or HF_HUB_OFFLINE=1): no request at all; the cache must hold the snapshot.
// - HF_TOKEN (or HUGGING_FACE_HUB_TOKEN) is sent as `Authorization: Bearer`; HF_ENDPOINT sets the
//   base URL (default https://huggingface.co).
import {
  COMMIT,
  defaultCacheDir,
  describeRef,
  HubError,
  type HubModelRef,
  missingModelFiles,
  parseHubRef,
  RepoCache,
} from "./hub_cache.ts";
import { INDEX_FILE, parseSafetensorsIndex, SINGLE_FILE } from "./safetensors_shards.ts";

export { HubError, type HubModelRef, parseHubRef };

/** Bytes of one file so far; bytesDone reaches bytesTotal when the file is complete. */
export interface HubProgress {
  file: string;
  bytesDone: number;
  bytesTotal: number;
}
export type HubProgressCallback = (progress: HubProgress) => void;

export interface HubOptions {
  /** Default: huggingface_hub's (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub). */
  cacheDir?: string;
  /** Default: HF_ENDPOINT, else https://huggingface.co. */
  endpoint?: string;
  /** Default: HF_TOKEN, else HUGGING_FACE_HUB_TOKEN; null sends none. */
  token?: string | null;
  /** Default: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to 1, ON, YES or TRUE. */
  offline?: boolean;
  onProgress?: HubProgressCallback;
}

/** Lost connections within one file are resumed this many times before giving up. */
const RESUME_ATTEMPTS = 5;

interface RepoFile {
  size: number;
  /** sha256 (64 hex) for LFS files, git blob sha1 (40 hex) otherwise: the blob's name. */
  hash: string;
}

/** Downloads (or finds in the cache) the model and returns its snapshot folder. */
export async function downloadModel(
  spec: string | HubModelRef,
  options: HubOptions = {},
): Promise<string> {
  const ref = typeof spec === "string" ? parseHubRef(spec) : spec;
  if (!ref) throw new HubError(String(spec), "not an hf:ORG/NAME[@REVISION] reference");
  const cache = new RepoCache(options.cacheDir ?? defaultCacheDir(), ref.repo);
  const offline = options.offline ?? isTrue(
    Deno.env.get("HF_HUB_OFFLINE") ??
      Deno.env.get("TRANSFORMERS_OFFLINE"),
  );
  if (offline) return await fromCache(ref, cache);
  // A commit's files never change: a complete snapshot of one needs no request (huggingface_hub
  // does the same).
  if (COMMIT.test(ref.revision)) {
    const dir = cache.snapshot(ref.revision);
    if ((await missingModelFiles(dir)).length === 0) return dir;
  }

  try {
    return await download(ref, cache, new HubClient(ref, options));
  } catch (e) {
    if (e instanceof ConnectionLost) throw new HubError(describeRef(ref), e.message);
    throw e;
  }
}

async function download(ref: HubModelRef, cache: RepoCache, hub: HubClient): Promise<string> {
  const { commit, files } = await hub.repoFiles();
  const fetchFile = async (name: string) => {
    const file = files.get(name);
    if (!file) throw new HubError(describeRef(ref), `the repository has no ${name}`);
    await hub.download(name, file, cache, commit);
  };
  await fetchFile("config.json");
  await fetchFile("tokenizer.json");
  if (files.has("tokenizer_config.json")) await fetchFile("tokenizer_config.json");
  if (files.has(SINGLE_FILE)) {
    await fetchFile(SINGLE_FILE);
  } else if (files.has(INDEX_FILE)) {
    await fetchFile(INDEX_FILE);
    const indexPath = `${cache.snapshot(commit)}/${INDEX_FILE}`;
    const index = parseSafetensorsIndex(await Deno.readTextFile(indexPath), indexPath);
    for (const shard of index.shards) await fetchFile(shard);
  } else {
    throw new HubError(
      describeRef(ref),
      `has neither ${SINGLE_FILE} nor ${INDEX_FILE} (only safetensors weights are read)`,
    );
  }
  await cache.saveRef(ref.revision, commit);
  return cache.snapshot(commit);
}

async function fromCache(ref: HubModelRef, cache: RepoCache): Promise<string> {
  const commit = await cache.commitOf(ref.revision);
  const hint = "run once without HF_HUB_OFFLINE (or offline: false) to download it";
  if (!commit) {
    throw new HubError(
      describeRef(ref),
      `offline, and the cache (${cache.root}) has no snapshot of this revision: ${hint}`,
    );
  }
  const dir = cache.snapshot(commit);
  const missing = await missingModelFiles(dir);
  if (missing.length) {
    throw new HubError(
      describeRef(ref),
      `offline, and the cached snapshot ${dir} lacks ${missing.join(", ")}: ${hint}`,
    );
  }
  return dir;
}

class HubClient {
  readonly endpoint: string;
  readonly token: string | null;
  readonly source: string;

  constructor(readonly ref: HubModelRef, readonly options: HubOptions) {
    this.endpoint = (options.endpoint ?? Deno.env.get("HF_ENDPOINT") ?? "https://huggingface.co")
      .replace(/\/+$/, "");
    this.token = options.token === undefined
      ? Deno.env.get("HF_TOKEN") || Deno.env.get("HUGGING_FACE_HUB_TOKEN") || null
      : options.token;
    this.source = describeRef(ref);
  }

  /** The commit the revision names now, and the repository's files with sizes and hashes. */
  async repoFiles(): Promise<{ commit: string; files: Map<string, RepoFile> }> {
    const url = `${this.endpoint}/api/models/${this.ref.repo}/revision/` +
      `${encodeURIComponent(this.ref.revision)}?blobs=true`;
    const response = await this.get(url, {});
    let info: { sha?: unknown; siblings?: unknown };
    try {
      info = await response.json();
    } catch (e) {
      throw new HubError(this.source, `${url} did not answer JSON (${(e as Error).message})`);
    }
    if (typeof info.sha !== "string" || !COMMIT.test(info.sha) || !Array.isArray(info.siblings)) {
      throw new HubError(this.source, `${url} did not answer a commit and a file list`);
    }
    const files = new Map<string, RepoFile>();
    for (const sibling of info.siblings) {
      const lfs = sibling?.lfs;
      const hash = lfs?.sha256 ?? sibling?.blobId;
      const size = lfs?.size ?? sibling?.size;
      if (typeof sibling?.rfilename !== "string") continue;
      if (typeof hash === "string" && /^([0-9a-f]{40}|[0-9a-f]{64})$/.test(hash)) {
        if (Number.isSafeInteger(size) && size >= 0) files.set(sibling.rfilename, { size, hash });
      }
    }
    return { commit: info.sha, files };
  }

  /** Brings one file into the cache's blobs (unless there) and links it into the snapshot. */
  async download(name: string, file: RepoFile, cache: RepoCache, commit: string): Promise<void> {
    const blob = cache.blob(file.hash);
    const progress = (bytesDone: number) =>
      this.options.onProgress?.({ file: name, bytesDone, bytesTotal: file.size });
    if ((await sizeOf(blob)) === file.size) {
      progress(file.size);
      return await cache.link(commit, name, file.hash);
    }
    await Deno.mkdir(blob.slice(0, blob.lastIndexOf("/")), { recursive: true });
    const partial = `${blob}.incomplete`;
    const url = `${this.endpoint}/${this.ref.repo}/resolve/${commit}/${name}`;
    for (let attempt = 1;; attempt++) {
      try {
        await this.#continue(url, partial, file, progress);
        break;
      } catch (e) {
        if (!(e instanceof ConnectionLost) || attempt === RESUME_ATTEMPTS) {
          if (e instanceof ConnectionLost) {
            throw new HubError(
              this.source,
              `${name}: the connection broke ${attempt} times (${e.message}); ` +
                `run again to resume from ${partial}`,
            );
          }
          throw e;
        }
      }
    }
    const digest = await hashFile(partial, file.hash.length === 64 ? "sha256" : "gitSha1");
    if (digest !== file.hash) {
      await Deno.remove(partial);
      throw new HubError(
        this.source,
        `${name}: the downloaded bytes hash to ${digest}, but the Hub lists ${file.hash}; ` +
          "the file was discarded (run again to download it anew)",
      );
    }
    await Deno.rename(partial, blob);
    await cache.link(commit, name, file.hash);
  }

  /** Appends the rest of the file to `partial` (from its current size, via Range). */
  async #continue(
    url: string,
    partial: string,
    file: RepoFile,
    progress: (bytesDone: number) => void,
  ): Promise<void> {
    let have = (await sizeOf(partial)) ?? 0;
    if (have > file.size) have = 0; // not this file: start over
    const headers: Record<string, string> = { "Accept-Encoding": "identity" };
    if (have > 0) headers.Range = `bytes=${have}-`;
    const response = have === file.size ? undefined : await this.get(url, headers, [200, 206, 416]);
    if (response?.status === 416 || (response?.status === 200 && have > 0)) {
      have = 0; // the server ignored or refused the range: take the whole file
    }
    if (response?.status === 206) {
      const start = /^bytes (\d+)-/.exec(response.headers.get("Content-Range") ?? "")?.[1];
      if (Number(start) !== have) {
        await response.body?.cancel();
        throw new HubError(this.source, `${url} answered a range that does not start at ${have}`);
      }
    }
    if (response?.status === 416) {
      await response.body?.cancel();
      await Deno.remove(partial).catch(() => {});
      return await this.#continue(url, partial, file, progress);
    }
    const out = await Deno.open(partial, { write: true, create: true, append: have > 0 });
    try {
      if (have === 0) await out.truncate(0);
      progress(have);
      if (!response?.body) return;
      const reader = response.body.getReader();
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (e) {
          throw new ConnectionLost((e as Error).message);
        }
        if (chunk.done) break;
        if (have + chunk.value.length > file.size) {
          await reader.cancel();
          await Deno.remove(partial).catch(() => {});
          throw new HubError(this.source, `${url} sent more than the ${file.size} bytes listed`);
        }
        for (let at = 0; at < chunk.value.length;) at += await out.write(chunk.value.subarray(at));
        have += chunk.value.length;
        progress(have);
      }
    } finally {
      out.close();
    }
    if (have < file.size) throw new ConnectionLost(`ended after ${have} of ${file.size} bytes`);
  }

  /**
   * GET, following redirects. The Fetch standard drops Authorization when a redirect leaves the
   * origin (the test checks it), so the token reaches the Hub and never its storage host.
   * Statuses other than `ok` become HubErrors that say what to do.
   */
  async get(url: string, headers: Record<string, string>, ok = [200]): Promise<Response> {
    const send = this.token ? { ...headers, Authorization: `Bearer ${this.token}` } : headers;
    let response: Response;
    try {
      response = await fetch(url, { headers: send });
    } catch (e) {
      throw new ConnectionLost(
        `cannot reach ${new URL(url).origin} (${(e as Error).message}); check the network, ` +
          "or set HF_HUB_OFFLINE=1 to use the cache",
      );
    }
    if (ok.includes(response.status)) return response;
    await response.body?.cancel();
    throw this.#statusError(url, response);
  }

  #statusError(url: string, response: Response): HubError {
    const code = response.headers.get("X-Error-Code");
    const tokenHint = this.token
      ? "the token (HF_TOKEN) was refused or lacks access to this repository"
      : "no token was sent: set HF_TOKEN to a token with access (private and gated models)";
    const what = code === "RevisionNotFound"
      ? `revision "${this.ref.revision}" not found`
      : code === "EntryNotFound"
      ? "file not found in the repository"
      : code === "GatedRepo"
      ? `gated repository: accept its terms on the Hub, then use a token with access; ${tokenHint}`
      : code === "RepoNotFound" || response.status === 401
      ? `repository "${this.ref.repo}" not found or not accessible (${tokenHint})`
      : response.status === 403
      ? `access denied (${tokenHint})`
      : response.status === 404
      ? "not found"
      : "unexpected answer";
    return new HubError(this.source, `${what} [HTTP ${response.status} from ${url}]`);
  }
}

/** A transient failure: the download is resumed from what arrived. */
class ConnectionLost extends Error {}

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    return (await Deno.stat(path)).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/** sha256 of the bytes, or git's blob sha1 (the sha1 of "blob {size}\0" then the bytes). */
async function hashFile(path: string, kind: "sha256" | "gitSha1"): Promise<string> {
  // Imported when first needed, so that mod.ts still bundles for browsers (which have no
  // node:crypto, nor files to hash); WebCrypto cannot hash a file in pieces.
  const { createHash } = await import("node:crypto");
  let hash: ReturnType<typeof createHash>;
  if (kind === "sha256") {
    hash = createHash("sha256");
  } else {
    hash = createHash("sha1");
    hash.update(`blob ${(await Deno.stat(path)).size}\0`);
  }
  const file = await Deno.open(path, { read: true });
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

function isTrue(value: string | undefined): boolean {
  return ["1", "ON", "YES", "TRUE"].includes((value ?? "").toUpperCase());
}
