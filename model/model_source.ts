// Where a base model comes from: a local folder, or `hf:ORG/NAME[@REVISION]` on the Hugging Face
// Hub (model/hub.ts downloads it into huggingface_hub's cache once). A run records the Hub
// reference pinned to the commit it resolved to, so that it resumes, and its networked clients
// load, the very same weights; a pinned reference whose snapshot is cached needs no network.
// (Kept out of model/load.ts: the Hub client uses node:crypto, which a browser bundle lacks.)
import { downloadModel, HubError, type HubOptions, type HubProgress, parseHubRef } from "./hub.ts";

export { HubError };

/** The local folder of model `spec`: a folder as it is, a Hub reference downloaded or cached. */
export async function modelFolder(spec: string, hub: HubOptions = {}): Promise<string> {
  return parseHubRef(spec) ? await downloadModel(spec, hub) : spec;
}

/** `spec` with a Hub revision (a branch or tag) replaced by the commit it names now. */
export async function pinnedModel(spec: string, hub: HubOptions = {}): Promise<string> {
  const ref = parseHubRef(spec);
  if (!ref) return spec;
  const folder = await downloadModel(ref, hub);
  return `hf:${ref.repo}@${folder.slice(folder.lastIndexOf("/") + 1)}`;
}

/** Hub options that tell `progress` (a Progress, or any logger) of each file downloaded: every
 * tenth of a large file, and when it is complete. */
export function hubProgress(spec: string, progress?: { log(line: string): void }): HubOptions {
  if (!progress) return {};
  const shown = new Map<string, number>();
  return {
    onProgress({ file, bytesDone, bytesTotal }: HubProgress) {
      const tenth = bytesTotal === 0 ? 10 : Math.floor((10 * bytesDone) / bytesTotal);
      const last = shown.get(file);
      if (last === tenth || (tenth < 10 && bytesTotal < LARGE_FILE)) return;
      shown.set(file, tenth);
      const mb = (n: number) => (n / 1e6).toFixed(1);
      progress.log(
        `${spec}: ${file} ${mb(bytesDone)}/${mb(bytesTotal)} MB` +
          (tenth < 10 ? ` (${tenth * 10}%)` : " downloaded"),
      );
    },
  };
}

/** Files from this size on report every tenth (smaller ones only their end). */
const LARGE_FILE = 20e6;
