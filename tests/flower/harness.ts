// What the Flower tests share: the project's Flower environment (flower/.venv, made by
// scripts/setup_flower.sh), a real flower-superlink on 127.0.0.1 with free ports, the shipped
// Flower App started with Flower's own `flwr run`, and test node processes (test_node.ts) whose
// stdout lines a test can wait for. Without the venv the tests are skipped, saying so.

import { fileURLToPath } from "node:url";
import { writeSafetensors } from "../../model/safetensors.ts";
import type { NamedTensor } from "../../model/safetensors.ts";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const VENV_BIN = `${ROOT}flower/.venv/bin`;
const DENO = Deno.execPath();

export function haveFlower(): boolean {
  try {
    return Deno.statSync(`${VENV_BIN}/flower-superlink`).isFile;
  } catch {
    return false;
  }
}

/** Deno.test, skipped with a message when the Flower venv is absent (never a fake server). */
export function flowerTest(name: string, fn: () => Promise<void>): void {
  const ok = haveFlower();
  if (!ok) {
    console.warn(`skipping "${name}": flower/.venv is absent (run scripts/setup_flower.sh)`);
  }
  Deno.test({ name, ignore: !ok, fn });
}

export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface Tls {
  dir: string;
  ca: string;
  cert: string;
  key: string;
}

/** A test CA and a certificate for 127.0.0.1 signed by it (openssl, in a fresh folder). */
export async function makeTestCa(): Promise<Tls> {
  const dir = await Deno.makeTempDir({ prefix: "flower-tls-" });
  const run = async (...args: string[]) => {
    const out = await new Deno.Command("openssl", { args, cwd: dir, stderr: "piped" }).output();
    if (!out.success) {
      throw new Error(`openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
    }
  };
  await run(
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-days",
    "2",
    "-subj",
    "/CN=test-ca",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
  );
  await run(
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-subj",
    "/CN=127.0.0.1",
    "-keyout",
    "server.key",
    "-out",
    "server.csr",
  );
  await Deno.writeTextFile(`${dir}/ext.cnf`, "subjectAltName=IP:127.0.0.1\n");
  await run(
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    "ext.cnf",
    "-out",
    "server.pem",
  );
  return { dir, ca: `${dir}/ca.pem`, cert: `${dir}/server.pem`, key: `${dir}/server.key` };
}

export class SuperLink {
  private constructor(
    readonly url: string,
    readonly home: string,
    readonly tls: Tls | undefined,
    private readonly process: Deno.ChildProcess,
    readonly logPath: string,
  ) {}

  /** Starts flower-superlink on a free port and waits until it answers. */
  static async start(opts: { tls?: Tls; auth?: boolean; port?: number } = {}): Promise<SuperLink> {
    const port = opts.port ?? freePort();
    const home = await Deno.makeTempDir({ prefix: "flower-home-" });
    const logPath = `${home}/superlink.log`;
    const args = ["--host", "127.0.0.1", "--port", String(port)];
    args.push("--disable-runtime-dependency-installation"); // no `uv sync`: the venv has it all
    if (opts.tls) {
      args.push("--ssl-certfile", opts.tls.cert, "--ssl-keyfile", opts.tls.key);
      args.push("--ssl-ca-certfile", opts.tls.ca);
    } else args.push("--insecure");
    if (opts.auth) args.push("--enable-supernode-auth");
    const log = await Deno.open(logPath, { write: true, create: true });
    const process = new Deno.Command(`${VENV_BIN}/flower-superlink`, {
      args,
      cwd: home,
      env: flowerEnv(home),
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // Both streams go to one log file (read on failure).
    const logWriter = log.writable.getWriter();
    const pump = async (s: ReadableStream<Uint8Array>) => {
      for await (const chunk of s) await logWriter.write(chunk);
    };
    Promise.all([pump(process.stdout), pump(process.stderr)]).finally(() => logWriter.close());
    const scheme = opts.tls ? "https" : "http";
    const link = new SuperLink(`${scheme}://127.0.0.1:${port}`, home, opts.tls, process, logPath);
    const config = [
      `[superlink]`,
      `default = "test"`,
      `[superlink.test]`,
      `address = "127.0.0.1:${port}"`,
      opts.tls ? `root-certificates = "${opts.tls.ca}"` : `insecure = true`,
    ];
    await Deno.writeTextFile(`${home}/config.toml`, config.join("\n") + "\n");
    const client = opts.tls
      ? Deno.createHttpClient({ caCerts: [await Deno.readTextFile(opts.tls.ca)] })
      : undefined;
    try {
      for (let i = 0; i < 300; i++) {
        try {
          const res = await fetch(`${link.url}/health`, client ? { client } : {});
          await res.body?.cancel();
          if (res.ok) return link;
        } catch { /* not up yet */ }
        await sleep(100);
      }
    } finally {
      client?.close();
    }
    await link.stop();
    throw new Error(`flower-superlink did not start:\n${await Deno.readTextFile(logPath)}`);
  }

  /** Runs the `flwr` CLI against this SuperLink; returns stdout, throws with stderr on failure. */
  async flwr(...args: string[]): Promise<string> {
    const out = await new Deno.Command(`${VENV_BIN}/flwr`, {
      args,
      cwd: ROOT,
      env: flowerEnv(this.home),
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    if (!out.success) {
      throw new Error(
        `flwr ${args.join(" ")} failed:\n${text}${new TextDecoder().decode(out.stderr)}`,
      );
    }
    return text;
  }

  /**
   * Starts the shipped Flower App (flower/) with `flwr run`, its initial shared tensors written
   * to a safetensors file; returns the run id and the folder the ServerApp writes its result to.
   */
  async run(
    initial: Map<string, NamedTensor>,
    config: Record<string, string | number | boolean>,
  ): Promise<{ runId: string; out: string }> {
    const dir = await Deno.makeTempDir({ prefix: "flower-run-", dir: this.home });
    await writeSafetensors(`${dir}/initial.safetensors`, initial, {});
    const all = { "initial-arrays": `${dir}/initial.safetensors`, out: `${dir}/out`, ...config };
    const runConfig = Object.entries(all).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ");
    const text = await this.flwr(
      "run",
      "flower",
      "test",
      "--run-config",
      runConfig,
      "--format",
      "json",
    );
    const result = JSON.parse(text);
    if (!result.success) throw new Error(`flwr run failed: ${text}`);
    return { runId: String(result["run-id"]), out: `${dir}/out` };
  }

  /** The run's status as `flwr ls` reports it, e.g. "finished:completed". */
  async status(runId: string): Promise<string> {
    const text = await this.flwr("ls", "test", "--run-id", runId, "--format", "json");
    return String(JSON.parse(text).runs[0].status);
  }

  async waitFinished(runId: string, timeoutS: number): Promise<string> {
    const end = Date.now() + timeoutS * 1000;
    while (Date.now() < end) {
      const status = await this.status(runId);
      if (status.startsWith("finished")) return status;
      await sleep(500);
    }
    throw new Error(`run ${runId} not finished after ${timeoutS} s:\n${await this.log()}`);
  }

  log(): Promise<string> {
    return Deno.readTextFile(this.logPath);
  }

  /** Stops the SuperLink (its SuperExec follows it) and removes its folder. */
  async stop(): Promise<void> {
    try {
      this.process.kill("SIGTERM");
    } catch { /* already gone */ }
    await this.process.status;
    await Deno.remove(this.home, { recursive: true });
  }
}

function flowerEnv(home: string): Record<string, string> {
  return {
    PATH: `${VENV_BIN}:${Deno.env.get("PATH") ?? ""}`,
    FLWR_HOME: home,
    HOME: home,
    NO_COLOR: "1",
  };
}

/** A test node process (test_node.ts) and the lines it has printed so far. */
export class NodeProcess {
  readonly lines: string[] = [];
  /** When each line arrived (ms since the epoch). */
  readonly times: number[] = [];
  stderr = "";
  readonly #process: Deno.ChildProcess;
  readonly #done: Promise<void>;

  constructor(args: string[]) {
    this.#process = new Deno.Command(DENO, {
      args: ["run", "-A", "--no-check", `${ROOT}tests/flower/test_node.ts`, ...args],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const read = async (s: ReadableStream<Uint8Array>, onLine: (l: string) => void) => {
      let buf = "";
      const lines = s.pipeThrough(new TextDecoderStream() as TransformStream<Uint8Array, string>);
      for await (const chunk of lines) {
        buf += chunk;
        const parts = buf.split("\n");
        buf = parts.pop()!;
        parts.forEach(onLine);
      }
      if (buf) onLine(buf);
    };
    this.#done = Promise.all([
      read(this.#process.stdout, (l) => {
        this.lines.push(l);
        this.times.push(Date.now());
      }),
      read(this.#process.stderr, (l) => this.stderr += l + "\n"),
    ]).then(() => {});
  }

  /** Waits for a stdout line matching `pattern`; returns its match and when it came. */
  async waitFor(pattern: RegExp, timeoutS = 60): Promise<RegExpMatchArray & { at: number }> {
    const end = Date.now() + timeoutS * 1000;
    while (Date.now() < end) {
      for (const [i, line] of this.lines.entries()) {
        const m = line.match(pattern);
        if (m) return Object.assign(m, { at: this.times[i] });
      }
      await sleep(50);
    }
    throw new Error(
      `node never printed ${pattern}; stdout:\n${this.lines.join("\n")}\nstderr:\n${this.stderr}`,
    );
  }

  async nodeId(): Promise<string> {
    return (await this.waitFor(/^node (\d+)$/))[1];
  }

  /** Ends the process (SIGTERM: the node signs off; SIGKILL: it just vanishes). */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<Deno.CommandStatus> {
    try {
      this.#process.kill(signal);
    } catch { /* already exited */ }
    return await this.exit();
  }

  async exit(): Promise<Deno.CommandStatus> {
    const status = await this.#process.status;
    await this.#done;
    return status;
  }
}

/** The shared tensors the tests start from: small dyadic values, so FedAvg's float32 sums are exact. */
export function initialArrays(): Map<string, NamedTensor> {
  const a = Float32Array.from({ length: 6 }, (_, i) => (i - 3) * 0.5);
  const b = Float32Array.from({ length: 4 }, (_, i) => i * 0.25 - 1);
  return new Map([
    ["blocks.0.attn.lora_A", { shape: [2, 3], data: a }],
    ["generalist.0.lora_B", { shape: [4], data: b }],
  ]);
}
