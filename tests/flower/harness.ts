// What the Flower tests share: the project's Flower environment (flower/.venv, made by
// scripts/setup_flower.sh), a real flower-superlink on 127.0.0.1 with free ports, the shipped
// Flower App started with Flower's own `flwr run`, and node processes (test_node.ts: a trivial
// computation; comigs_node.ts: the real `deno task flower-node`) whose output lines a test can
// wait for. Without the venv the tests are skipped, saying so, except in CI (CI=true), where
// they fail with the set-up hint: a CI run that skipped them would prove nothing.

import { fileURLToPath } from "node:url";
import { aggregate, type Aggregation, DEFAULT_TRIM } from "../../fed/aggregate.ts";
import { type NamedTensor, readSafetensors } from "../../model/safetensors.ts";

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

/**
 * Runs the Python script tests/flower/`script` in the Flower venv (the comigs_flower package on
 * its path) with `input` as JSON on stdin, and parses its stdout as JSON (typed as the caller
 * says, else as JSON.parse types it).
 */
export async function flowerPython<T = ReturnType<typeof JSON.parse>>(
  script: string,
  input: unknown,
): Promise<T> {
  const child = new Deno.Command(`${VENV_BIN}/python`, {
    args: [`${ROOT}tests/flower/${script}`],
    env: { PYTHONPATH: `${ROOT}flower` },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(JSON.stringify(input)));
  await writer.close();
  const out = await child.output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

const SETUP_HINT = "flower/.venv is absent: run `bash scripts/setup_flower.sh` (npm test does)";

/** Deno.test, skipped with a message when the Flower venv is absent (failing in CI). */
export function flowerTest(name: string, fn: () => Promise<void>): void {
  if (haveFlower()) return Deno.test({ name, fn });
  if (Deno.env.get("CI") === "true") {
    return Deno.test(name, () => {
      throw new Error(`${SETUP_HINT}; CI must run the Flower tests, not skip them`);
    });
  }
  console.warn(`skipping "${name}": ${SETUP_HINT}`);
  Deno.test({ name, ignore: true, fn });
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
   * Starts the shipped Flower App (flower/) with `flwr run` and these run-config overrides;
   * returns the run id and the folder the ServerApp writes its run to.
   */
  async run(
    config: Record<string, string | number | boolean>,
  ): Promise<{ runId: string; out: string }> {
    const out = await Deno.makeTempDir({ prefix: "flower-run-", dir: this.home });
    const all = { out, ...config };
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
    return { runId: String(result["run-id"]), out };
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

/** A node process and the lines it has printed so far, stdout and stderr apart. */
export class NodeProcess {
  readonly lines: string[] = [];
  readonly errLines: string[] = [];
  /** When each line arrived (ms since the epoch). */
  readonly times: number[] = [];
  readonly errTimes: number[] = [];
  readonly #process: Deno.ChildProcess;
  readonly #done: Promise<void>;

  /** `script`: test_node.ts (default) or comigs_node.ts, under tests/flower/. */
  constructor(args: string[], script = "test_node.ts") {
    this.#process = new Deno.Command(DENO, {
      args: ["run", "-A", "--no-check", `${ROOT}tests/flower/${script}`, ...args],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const read = async (
      s: ReadableStream<Uint8Array<ArrayBuffer>>,
      lines: string[],
      times: number[],
    ) => {
      let buf = "";
      const onLine = (l: string) => (lines.push(l), times.push(Date.now()));
      for await (const chunk of s.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        const parts = buf.split("\n");
        buf = parts.pop()!;
        parts.forEach(onLine);
      }
      if (buf) onLine(buf);
    };
    this.#done = Promise.all([
      read(this.#process.stdout, this.lines, this.times),
      read(this.#process.stderr, this.errLines, this.errTimes),
    ]).then(() => {});
  }

  get stderr(): string {
    return this.errLines.map((l) => l + "\n").join("");
  }

  /**
   * Waits for a line matching `pattern` (on stdout, or stderr where comigs nodes log); returns
   * its match and when it came.
   */
  async waitFor(
    pattern: RegExp,
    timeoutS = 60,
    stream: "stdout" | "stderr" = "stdout",
  ): Promise<RegExpMatchArray & { at: number }> {
    const [lines, times] = stream === "stdout"
      ? [this.lines, this.times]
      : [this.errLines, this.errTimes];
    const end = Date.now() + timeoutS * 1000;
    while (Date.now() < end) {
      for (const [i, line] of lines.entries()) {
        const m = line.match(pattern);
        if (m) return Object.assign(m, { at: times[i] });
      }
      await sleep(50);
    }
    throw new Error(
      `node never printed ${pattern}; stdout:\n${this.lines.join("\n")}\nstderr:\n${this.stderr}`,
    );
  }

  /** The node id a test node prints on stdout. */
  async nodeId(): Promise<string> {
    return (await this.waitFor(/^node (\d+)$/))[1];
  }

  /** The node id a comigs node logs once it is active. */
  async comigsNodeId(timeoutS = 120): Promise<string> {
    return (await this.waitFor(/^flower node (\d+) at /, timeoutS, "stderr"))[1];
  }

  /** Ends the process (SIGTERM: the node signs off; SIGKILL: it just vanishes). */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<Deno.CommandStatus> {
    try {
      this.#process.kill(signal);
    } catch { /* already exited */ }
    return await this.exit();
  }

  /** Waits for the process to end (at most `timeoutS` seconds, when given). */
  async exit(timeoutS?: number): Promise<Deno.CommandStatus> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      if (timeoutS !== undefined) {
        timer = setTimeout(
          () => reject(new Error(`node still running after ${timeoutS} s:\n${this.stderr}`)),
          timeoutS * 1000,
        );
      }
    });
    try {
      const status = await Promise.race([this.#process.status, late]);
      await this.#done;
      return status;
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * The shared tensors the trivial nodes offer as initial (real adapter names: the ServerApp
 * refuses any other), with values that make float32 and float64 averaging differ.
 */
export function initialArrays(): Map<string, NamedTensor> {
  const a = Float32Array.from({ length: 6 }, (_, i) => (i - 3) * 0.3);
  const b = Float32Array.from({ length: 4 }, (_, i) => i * 0.7 - 1.1);
  return new Map([
    ["h.0.attn.c_attn.lora_A", { shape: [2, 3], data: a }],
    ["h.0.mlp.experts.0.c_fc.lora_B", { shape: [4], data: b }],
  ]);
}

/** How a hostile trivial node spoils its train replies (test_node.ts --attack). */
export const ATTACKS = ["nan", "shape", "specialist", "scale"] as const;
export type Attack = typeof ATTACKS[number];

/**
 * A trivial node's train reply: each received tensor + `value`, spoilt as `attack` says: a NaN in
 * the first tensor, the first tensor's shape reversed, a specialist's tensor added, or the update
 * scaled by 10⁶.
 */
export function trivialTrained(
  arrays: ReadonlyMap<string, NamedTensor>,
  value: number,
  attack?: Attack,
): Map<string, NamedTensor> {
  const step = attack === "scale" ? value * 1e6 : value;
  const out = new Map<string, NamedTensor>();
  for (const [name, t] of arrays) {
    out.set(name, { shape: t.shape, data: t.data.map((x) => x + step) });
  }
  const [name, first] = [...out][0];
  if (attack === "nan") first.data[1] = NaN;
  if (attack === "shape") out.set(name, { shape: [...first.shape].reverse(), data: first.data });
  if (attack === "specialist") {
    out.set("h.0.mlp.experts.1.c_fc.lora_A", { shape: [1], data: new Float32Array(1) });
  }
  return out;
}

/**
 * The run config of trivial nodes: they add a constant to every value (an update of norm
 * |value|·√10, up to 12.6 in these tests), not AdamW steps, so the ServerApp's default bound on
 * an honest update (2·lr·local-steps·√n) does not describe them. guard_test.ts tests that bound
 * with values chosen under it.
 */
export const TRIVIAL_RUN = { "max-update-norm": 100 };

/** A trivial node's part in a round: its client id, the value it adds, its token claim. */
export interface TrivialReply {
  client: number;
  value: number;
  tokens?: number;
}

/**
 * The global tensors trivial nodes (test_node.ts) reach from initialArrays(): per round, each
 * replying node returns every tensor + its value, and fed/aggregate.ts averages the replies in
 * client order (what the ServerApp must compute, bit for bit).
 */
export function trivialReference(
  rounds: TrivialReply[][],
  aggregation: Aggregation = "uniform",
  trim = DEFAULT_TRIM,
): Map<string, NamedTensor> {
  let global = initialArrays();
  for (const [r, replies] of rounds.entries()) {
    const sorted = [...replies].sort((a, b) => a.client - b.client);
    global = aggregate(
      sorted.map(({ client, value, tokens }) => ({
        round: r + 1,
        sender: client,
        trainTokens: tokens ?? 1,
        tensors: trivialTrained(global, value),
      })),
      aggregation,
      { trim },
    );
  }
  return global;
}

/** Asserts that a run's final.safetensors holds exactly `want`, bit for bit. */
export async function assertFinal(out: string, want: Map<string, NamedTensor>): Promise<void> {
  const final = (await readSafetensors(`${out}/final.safetensors`)).tensors;
  const names = [...final.keys()].sort().join();
  if (names !== [...want.keys()].sort().join()) {
    throw new Error(`final.safetensors holds [${names}], expected [${[...want.keys()]}]`);
  }
  for (const [name, t] of want) {
    const got = final.get(name)!;
    if (got.shape.join() !== t.shape.join() || got.data.some((x, i) => !Object.is(x, t.data[i]))) {
      throw new Error(`final ${name}: [${Array.from(got.data)}], expected [${Array.from(t.data)}]`);
    }
  }
}
