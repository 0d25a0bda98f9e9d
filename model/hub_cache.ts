// The local cache of Hugging Face models, in huggingface_hub's own layout so that either tool can
// use what the other downloaded:
//   {cache}/models--{org}--{name}/blobs/{sha256 or git sha1}   file contents, named by their hash
//   {cache}/models--{org}--{name}/blobs/{hash}.incomplete      a download in progress (resumable)
//   {cache}/models--{org}--{name}/snapshots/{commit}/{file}    relative symlink to ../../blobs/{hash}
//   {cache}/models--{org}--{name}/refs/{revision}              the commit a branch or tag resolved to
// where {cache} is HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
// ~/.cache/huggingface/hub. A snapshot folder is a model folder: config.json, the safetensors
// (one file, or the index and its shards) and tokenizer.json.
import { writeFileAtomic } from "./safetensors.ts";
import { INDEX_FILE, parseSafetensorsIndex, SINGLE_FILE } from "./safetensors_shards.ts";

export class HubError extends Error {
  constructor(source: string, message: string) {
    super(`${source}: ${message}`);
    this.name = "HubError";
  }
}

/** A model on the Hub: `hf:ORG/NAME[@REVISION]` (REVISION: a branch, tag or commit; main). */
export interface HubModelRef {
  repo: string;
  revision: string;
}

const REPO = /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*$/;
const REVISION = /^[\w.-]+(\/[\w.-]+)*$/;
export const COMMIT = /^[0-9a-f]{40}$/;

/** The reference in `spec`, or null when it does not start with `hf:` (a local folder). */
export function parseHubRef(spec: string): HubModelRef | null {
  if (!spec.startsWith("hf:")) return null;
  const [repo, revision = "main", ...rest] = spec.slice(3).split("@");
  const fail = (message: string): never => {
    throw new HubError(spec, `${message} (expected hf:ORG/NAME or hf:ORG/NAME@REVISION)`);
  };
  if (!REPO.test(repo) || repo.includes("..")) fail(`"${repo}" is not a repository name`);
  if (rest.length || !REVISION.test(revision) || revision.split("/").includes("..")) {
    fail(`"${spec.slice(3 + repo.length + 1)}" is not a revision`);
  }
  return { repo, revision };
}

export function describeRef(ref: HubModelRef): string {
  return `hf:${ref.repo}@${ref.revision}`;
}

/** The cache root from the options or huggingface_hub's environment variables. */
export function defaultCacheDir(): string {
  const env = (name: string) => Deno.env.get(name) || undefined;
  const home = env("HOME") ?? env("USERPROFILE") ?? ".";
  const cacheHome = env("XDG_CACHE_HOME") ?? `${home}/.cache`;
  return env("HF_HUB_CACHE") ?? `${env("HF_HOME") ?? `${cacheHome}/huggingface`}/hub`;
}

export class RepoCache {
  readonly root: string;
  constructor(cacheDir: string, readonly repo: string) {
    this.root = `${cacheDir}/models--${repo.replace("/", "--")}`;
  }

  blob(hash: string): string {
    return `${this.root}/blobs/${hash}`;
  }

  snapshot(commit: string): string {
    return `${this.root}/snapshots/${commit}`;
  }

  /** The commit a revision resolved to when last online (a commit resolves to itself). */
  async commitOf(revision: string): Promise<string | undefined> {
    if (COMMIT.test(revision)) return revision;
    try {
      const commit = (await Deno.readTextFile(`${this.root}/refs/${revision}`)).trim();
      return COMMIT.test(commit) ? commit : undefined;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
      throw e;
    }
  }

  async saveRef(revision: string, commit: string): Promise<void> {
    if (revision === commit) return;
    const path = `${this.root}/refs/${revision}`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await writeFileAtomic(path, new TextEncoder().encode(commit));
  }

  /** Points snapshots/{commit}/{file} at the blob (a relative symlink; a copy where none). */
  async link(commit: string, file: string, hash: string): Promise<void> {
    const dir = this.snapshot(commit);
    await Deno.mkdir(dir, { recursive: true });
    const path = `${dir}/${file}`;
    await Deno.remove(path).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
    try {
      await Deno.symlink(`../../blobs/${hash}`, path);
    } catch {
      await Deno.copyFile(this.blob(hash), path);
    }
  }
}

/** The files of a model folder that are absent: config, weights (with every shard), tokenizer. */
export async function missingModelFiles(dir: string): Promise<string[]> {
  const missing: string[] = [];
  for (const file of ["config.json", "tokenizer.json"]) {
    if (!await isFile(`${dir}/${file}`)) missing.push(file);
  }
  if (await isFile(`${dir}/${SINGLE_FILE}`)) return missing;
  if (!await isFile(`${dir}/${INDEX_FILE}`)) return [...missing, SINGLE_FILE];
  const index = parseSafetensorsIndex(
    await Deno.readTextFile(`${dir}/${INDEX_FILE}`),
    `${dir}/${INDEX_FILE}`,
  );
  for (const shard of index.shards) if (!await isFile(`${dir}/${shard}`)) missing.push(shard);
  return missing;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile; // follows the snapshot's symlinks to their blobs
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}
