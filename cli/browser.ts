// `deno task browser`: the run `deno task train` would make, computed in a browser tab's WebGPU
// instead of Deno's; or, with --join, a tab as one client of a networked run (`deno task
// serve`), like `deno task join`. This process reads the base model and the scenario (files a
// tab cannot read), bundles cli/browser_page.ts for browsers, serves both on 127.0.0.1, and
// either drives headless Chromium itself (playwright-core) or, with --serve, waits for any
// WebGPU browser to open the address. The tab runs fed/simulation.ts (or fed/client_loop.ts) and
// posts its progress, records and tensors back: the run folder gets train's files (interfaces.md)
// and the terminal train's table, or join's adapters. The tab holds the state, so a browser run
// does not resume (train's --resume is not a flag here).
import { type JoinOptions, openJoin } from "../fed/join.ts";
import { METHOD_SPECS, METHODS } from "../fed/methods.ts";
import type { TrainOptions } from "../fed/options.ts";
import { type Measurement, type RunEvent, summarise, summaryTable } from "../fed/records.ts";
import { prepareRun, type RunResult } from "../fed/run.ts";
import { openRun, writeRunOutputs } from "../fed/run_folder.ts";
import type { ClientCorpus } from "../fed/scenarios.ts";
import { members, type Streams } from "../fed/streams.ts";
import { modelFolder } from "../model/model_source.ts";
import type { Progress } from "../model/progress.ts";
import { parseSafetensors, writeFileAtomic } from "../model/safetensors.ts";
import { type FlagSpec, helpText, parseFlags, parsePort, runMain, UsageError } from "./args.ts";
import type { PageEvent, RunInput } from "./browser_protocol.ts";
import { joinFromFlags } from "./join_flags.ts";
import { ProgressBar } from "./progress.ts";
import { TRAIN_FLAGS, trainOptionsFromFlags } from "./train_flags.ts";

export const DEFAULT_CHROMIUM = "/usr/bin/chromium";
/** platform.md's headless Chromium with WebGPU (SwiftShader when the machine has no GPU). */
export const CHROMIUM_ARGS = [
  "--headless=new",
  "--enable-unsafe-webgpu",
  "--no-sandbox",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const USAGE = "deno task browser [train's flags except --resume] [--serve] [--port N] " +
  "[--chromium PATH] | --join URL --client ID --out DIR [--model DIR] [--serve] ...";
const { resume: _, help: __, ...RUN_FLAGS } = TRAIN_FLAGS;
const FLAGS: FlagSpec = {
  ...RUN_FLAGS,
  serve: {
    type: "boolean",
    help: "print the page's address and wait for a WebGPU browser to open it (no Chromium)",
  },
  port: { type: "string", help: "port on 127.0.0.1 (default: any free one)" },
  join: {
    type: "string",
    help: "be one client of the networked run at this address (deno task serve)",
  },
  client: { type: "string", help: "with --join: this tab's client id" },
  chromium: {
    type: "string",
    help: `Chromium to drive headless (default $CHROMIUM or ${DEFAULT_CHROMIUM})`,
  },
  help: { type: "boolean", help: "show this help" },
};

export interface BrowserOptions {
  /** Wait for a browser to open the page instead of starting Chromium. */
  serve: boolean;
  port: number;
  chromium: string;
  /** A new run may replace a run already in its folder. */
  overwrite?: boolean;
}

export type Invocation =
  | { help: true }
  | { browser: BrowserOptions } & ({ options: TrainOptions } | { join: JoinOptions });

export function parseInvocation(args: string[], now = new Date()): Invocation {
  const flags = parseFlags(args, FLAGS, USAGE);
  if (flags.help) return { help: true };
  const { serve, port, chromium, join, client, ...run } = flags;
  if (serve && chromium !== undefined) {
    throw new UsageError("--serve waits for your own browser; --chromium has no use with it");
  }
  const browser = {
    serve: serve === true,
    port: parsePort(port as string | undefined, 0),
    chromium: (chromium as string | undefined) ?? Deno.env.get("CHROMIUM") ?? DEFAULT_CHROMIUM,
    overwrite: run.overwrite === true,
  };
  if (join === undefined) {
    if (client !== undefined) throw new UsageError("--client is a client id of --join");
    return { options: trainOptionsFromFlags(run, now), browser };
  }
  const { out, model, ...others } = run;
  const extra = Object.keys(others).filter((f) => others[f] !== undefined);
  if (extra.length) {
    throw new UsageError(
      `--join takes the run's options from the server; remove --${extra.join(", --")}`,
    );
  }
  return { join: joinFromFlags({ join, client, out, model }, "join"), browser };
}

/** Runs `options` in a browser tab; writes the run folder and returns train's result. */
export async function runInBrowser(
  options: TrainOptions,
  browser: BrowserOptions,
  hooks: { progress: Progress; corpora?: ClientCorpus[] },
): Promise<RunResult> {
  if (!browser.serve) await checkExecutable(browser.chromium);
  const { plan, inputs: { categories } } = await prepareRun({ options }, {
    overwrite: browser.overwrite,
    corpora: hooks.corpora,
    progress: hooks.progress,
  });
  options = plan.options; // its base model pinned
  await tabModelFolder(options.model);
  const run = await openRun(plan);
  hooks.progress.log(`run folder: ${options.out}`);
  const spec = METHOD_SPECS[options.method];
  const tab = await inTab(
    { mode: "run", options, categories: categories.map((c) => c.name) },
    categories,
    spec.frozen ? 0 : spec.pooled ? 1 : categories.length,
    browser,
    hooks.progress,
    run,
  );
  const summary = summarise(
    options,
    members(categories),
    run.records,
    tab.pretrainedPpl,
  );
  await writeRunOutputs(options.out, { adapters: tab.adapters, global: tab.global, summary });
  return { out: options.out, summary, pretrainedPpl: tab.pretrainedPpl };
}

/** A browser tab as client `join.client` of the networked run at `join.server` (`deno task
 * join`'s work, with the state in the tab); writes the client's adapters into `join.out`. */
export async function joinInBrowser(
  join: JoinOptions,
  browser: BrowserOptions,
  hooks: { progress: Progress; corpora?: ClientCorpus[] },
): Promise<{ name: string }> {
  if (!browser.serve) await checkExecutable(browser.chromium);
  const { server, options, data } = await openJoin(join, hooks);
  const tab = await inTab(
    { mode: "join", server, client: join.client, options, categories: [data.name] },
    [data],
    1,
    browser,
    hooks.progress,
    { record: () => Promise.resolve(), event: () => Promise.resolve() },
  );
  await writeFileAtomic(`${join.out}/adapters.safetensors`, tab.adapters[0]);
  return { name: data.name };
}

/** The folder of base model `spec` (pinned: cached, no download), which a tab can read: one
 * model.safetensors. */
async function tabModelFolder(spec: string): Promise<string> {
  const folder = await modelFolder(spec);
  if (!(await Deno.stat(`${folder}/model.safetensors`).catch(() => null))?.isFile) {
    throw new UsageError(
      `--model ${spec}: a browser tab reads one model.safetensors, and ${folder} has none ` +
        `(sharded weights are read by deno task train, not by the tab)`,
    );
  }
  return folder;
}

/**
 * Serves the page with `input`, the base model and `categories`' streams, has a tab open it,
 * relays its events to `progress` and `record`, and returns what it sent: the base model's
 * perplexities and `adapterFiles` adapter files (and the shared tensors, when any).
 */
async function inTab(
  input: RunInput,
  categories: readonly Streams[],
  adapterFiles: number,
  browser: BrowserOptions,
  progress: Progress,
  records: { record(m: Measurement): Promise<void>; event(e: RunEvent): Promise<void> },
): Promise<{ pretrainedPpl: number[]; adapters: Uint8Array[]; global: Uint8Array | null }> {
  const model = await tabModelFolder(input.options.model);
  const files: Record<string, Uint8Array> = {
    "/": new TextEncoder().encode(PAGE_HTML),
    "/page.js": await bundlePage(),
    "/run.json": new TextEncoder().encode(JSON.stringify(input)),
    "/model/config.json": await Deno.readFile(`${model}/config.json`),
    "/model/model.safetensors": await Deno.readFile(`${model}/model.safetensors`),
  };
  for (const [k, c] of categories.entries()) {
    for (const split of ["train", "val", "test"] as const) {
      files[`/data/${k}/${split}`] = new Uint8Array(
        c[split].buffer,
        c[split].byteOffset,
        c[split].byteLength,
      );
    }
  }
  const adapters = new Array<Uint8Array | undefined>(adapterFiles);
  let global: Uint8Array | null = null;
  let settle!: { resolve: (ppl: number[]) => void; reject: (e: Error) => void };
  const finished = new Promise<number[]>((resolve, reject) => settle = { resolve, reject });

  let claimed = false;
  // Events are handled one at a time, in the order the page sent them.
  let handling: Promise<void> = Promise.resolve();
  const handle = async (event: PageEvent) => {
    switch (event.kind) {
      case "total":
        progress.total = event.total;
        return;
      case "begin":
        return progress.begin(event.step);
      case "update":
        return progress.update(event.update);
      case "evaluation":
        return progress.evaluation?.(event.update);
      case "log":
        return progress.log(event.line);
      case "done":
        return progress.done();
      case "record":
        return await records.record(event.record);
      case "event":
        return await records.event(event.event);
      case "result":
        return settle.resolve(event.pretrainedPpl);
      case "error":
        return settle.reject(new Error(`in the browser: ${event.message}\n${event.stack}`));
    }
  };
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: browser.port, onListen: () => {} },
    async (request) => {
      const path = new URL(request.url).pathname;
      if (request.method === "GET" && path === "/run.json") {
        // One tab computes the run; a second one (--serve, the address opened twice) would post
        // a second stream of events into the same run folder.
        if (claimed) {
          return new Response("this run is already open in another tab", { status: 409 });
        }
        claimed = true;
      }
      if (request.method === "GET" && files[path]) {
        return new Response(files[path].slice(), {
          headers: { "content-type": contentType(path) },
        });
      }
      if (request.method !== "POST") return new Response(`no ${path}`, { status: 404 });
      const body = new Uint8Array(await request.arrayBuffer());
      const client = /^\/adapters\/(\d+)$/.exec(path);
      try {
        if (path === "/event") {
          const event = JSON.parse(new TextDecoder().decode(body)) as PageEvent;
          handling = handling.then(() => handle(event));
          await handling;
        } else if (client && Number(client[1]) < adapterFiles) {
          parseSafetensors(body, `client ${client[1]}'s adapters from the browser`);
          adapters[Number(client[1])] = body;
        } else if (path === "/global") {
          parseSafetensors(body, "shared tensors from the browser");
          global = body;
        } else return new Response(`no ${path}`, { status: 404 });
      } catch (e) {
        settle.reject(e as Error);
        return new Response((e as Error).message, { status: 400 });
      }
      return new Response("ok");
    },
  );
  const url = `http://127.0.0.1:${server.addr.port}/`;
  let closeBrowser = async () => {};
  try {
    if (browser.serve) {
      progress.log(`open ${url} in a browser with WebGPU (Chrome, Edge; Firefox 141+; Safari 26+)`);
    } else closeBrowser = await openInChromium(browser.chromium, url, settle.reject);
    const pretrainedPpl = await finished;
    await handling;
    const missing = adapters.findIndex((a) => !a);
    if (missing >= 0) throw new Error(`the browser sent no adapters for client ${missing}`);
    return { pretrainedPpl, adapters: adapters as Uint8Array[], global };
  } finally {
    await closeBrowser();
    await server.shutdown();
  }
}

const PAGE_HTML = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>comigs: a federated run in this tab</title>
<pre id="status">comigs: loading…
</pre>
<script type="module" src="/page.js"></script>
`;

function contentType(path: string): string {
  if (path === "/") return "text/html; charset=utf-8";
  if (path.endsWith(".js")) return "text/javascript";
  if (path.endsWith(".json")) return "application/json";
  return "application/octet-stream";
}

/** cli/browser_page.ts and everything it imports as one browser module (Deno's bundler). */
async function bundlePage(): Promise<Uint8Array> {
  const dir = await Deno.makeTempDir({ prefix: "comigs-page-" });
  try {
    const output = `${dir}/page.js`;
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "bundle",
        "--quiet",
        "--platform",
        "browser",
        "-o",
        output,
        new URL("./browser_page.ts", import.meta.url).pathname,
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (code !== 0) {
      throw new Error(`bundling the page failed:\n${new TextDecoder().decode(stderr)}`);
    }
    return await Deno.readFile(output);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function checkExecutable(path: string): Promise<void> {
  const info = await Deno.stat(path).catch(() => null);
  if (!info?.isFile) {
    throw new UsageError(
      `no Chromium at ${path}. Install it (Debian/Ubuntu: apt-get install -y chromium), pass ` +
        `--chromium PATH (or set CHROMIUM), or use --serve and open the address in any browser ` +
        `with WebGPU`,
    );
  }
}

/** Opens `url` in headless Chromium; page errors and crashes go to `fail`. Returns the closer. */
async function openInChromium(
  executablePath: string,
  url: string,
  fail: (e: Error) => void,
): Promise<() => Promise<void>> {
  const { chromium } = await import("playwright-core");
  const browser = await chromium.launch({ executablePath, args: CHROMIUM_ARGS });
  try {
    const page = await browser.newPage();
    page.on("pageerror", (e) => fail(new Error(`in the browser: ${e.message}`)));
    page.on("crash", () => fail(new Error("the browser tab crashed")));
    page.on("console", (m) => {
      if (m.type() === "error") console.error(`browser: ${m.text()}`);
    });
    await page.goto(url);
  } catch (e) {
    await browser.close();
    throw e;
  }
  return () => browser.close();
}

async function main(): Promise<void> {
  const invocation = parseInvocation(Deno.args);
  if ("help" in invocation) {
    console.log(helpText(FLAGS, USAGE));
    console.log(`\nmethods: ${METHODS.join(", ")} (deno task train --help says what each does)`);
    return;
  }
  const progress = new ProgressBar(0);
  if ("join" in invocation) {
    const { join } = invocation;
    const { name } = await joinInBrowser(join, invocation.browser, { progress });
    console.log(`client ${join.client} (${name}): adapters in ${join.out}/adapters.safetensors`);
    return;
  }
  const { summary, pretrainedPpl, out } = await runInBrowser(
    invocation.options,
    invocation.browser,
    { progress },
  );
  console.log(`\n${summaryTable(summary, pretrainedPpl)}`);
  console.log(`\nrun folder: ${out}`);
}

if (import.meta.main) await runMain(main, FLAGS);
