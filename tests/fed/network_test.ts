// A federation over HTTP (fed/network.ts): a server with no model and two clients that each keep
// their own data end with the same bits as the simulated run; a server killed after round 1 and
// resumed on the same port, with its clients reconnecting by themselves, still does; and bad
// requests (an unknown client, a second process joining as the same client, a method that is
// not a federation) are clear errors.
import { ProgressBar } from "../../cli/progress.ts";
import { joinRun } from "../../fed/join.ts";
import { RemoteEndpoint, type RunInfo, serverHandler } from "../../fed/http_server.ts";
import { RunStopped, runTraining, serveRun } from "../../fed/run.ts";
import { readConfig } from "../../model/checkpoint.ts";
import { assert, assertEquals, assertRejects, assertSameFile } from "../assert.ts";
import { gpuTest } from "../util.ts";
import { corpora, MODEL, options } from "./tiny_run.ts";

const quiet = () => new ProgressBar(0, 0, false, () => {});

async function sameRecords(a: string, b: string): Promise<void> {
  const strip = async (out: string) =>
    (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n").map((l) => ({
      ...JSON.parse(l),
      wall_s: 0,
    }));
  assertEquals(await strip(a), await strip(b));
}

/** A port that was free a moment ago (the resumed server must listen where clients look). */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

gpuTest(
  "a networked run ends with the same bits as the simulated one, resumed or not",
  async (engine) => {
    const dir = await Deno.makeTempDir();
    const simulated = await runTraining(engine, {
      options: options(`${dir}/sim`, "comigs-1g1s", 3),
    }, {
      progress: quiet(),
      corpora: corpora(),
    });

    for (const killed of [false, true]) {
      const out = `${dir}/net-${killed}`;
      const port = freePort();
      const clients = (url: string) =>
        [0, 1].map((client) =>
          joinRun(engine, { server: url, client, out: `${out}-client${client}` }, {
            progress: quiet(),
            corpora: corpora(),
          })
        );
      let joined: Promise<unknown>[] = [];
      const serve = (start: Parameters<typeof serveRun>[0], stopAfterRound?: number) =>
        serveRun(start, {
          progress: quiet(),
          hostname: "127.0.0.1",
          port,
          stopAfterRound,
          listening: (url) => {
            if (!joined.length) joined = clients(url);
          },
        });
      const start = { options: options(out, "comigs-1g1s", 3) };
      let served;
      if (killed) {
        await assertRejects(() => serve(start, 1), RunStopped);
        // The clients keep polling a dead address until the server is back, then rejoin.
        served = await serve({ resume: out });
      } else served = await serve(start);
      await Promise.all(joined);

      // The same figures; the server says its clients reported them.
      assertEquals(served.summary, {
        ...simulated.summary,
        base_model: served.summary.base_model,
        reported_by_clients: true,
      });
      await sameRecords(out, `${dir}/sim`);
      await assertSameFile(`${out}/global.safetensors`, `${dir}/sim/global.safetensors`);
      for (const client of [0, 1]) {
        await assertSameFile(
          `${out}-client${client}/adapters.safetensors`,
          `${dir}/sim/clients/${client}/adapters.safetensors`,
        );
      }
      // The specialists stayed on the devices.
      assertEquals(await Deno.stat(`${out}/clients`).then(() => true, () => false), false);
    }
    await Deno.remove(dir, { recursive: true });
  },
);

Deno.test("network: unknown clients, a second process joining as one, non-federated methods", async () => {
  const base = await readConfig(MODEL);
  const info: RunInfo = { options: options("unused", "comigs-1g1s"), base, needPretrained: true };
  const endpoints = [new RemoteEndpoint(0), new RemoteEndpoint(1)];
  const handle = serverHandler(() => info, endpoints);
  const call = (path: string, init: RequestInit = {}) =>
    handle(new Request(`http://server${path}`, init));
  const join = { name: "numbers", trainTokens: 100, pretrainedPpl: 50 };

  let response = await call("/task?client=2&session=x");
  assertEquals([response.status, await response.text()], [
    400,
    "client must be an id in 0..1, got 2",
  ]);
  response = await call("/task?client=0&session=x");
  assertEquals([response.status, await response.text()], [
    401,
    "client 0 has not joined this server",
  ]);
  response = await call("/join?client=0", {
    method: "POST",
    body: JSON.stringify({ ...join, pretrainedPpl: null }),
  });
  assertEquals(response.status, 400);
  response = await call("/join?client=0", { method: "POST", body: "{not json" });
  assertEquals(response.status, 400);
  assert((await response.text()).startsWith("bad request: "));
  const joinAs = (body: unknown) =>
    call("/join?client=0", { method: "POST", body: JSON.stringify(body) });
  const first = await (await joinAs(join)).json();
  assert(typeof first.credential === "string" && first.credential.length > 20, "no credential");
  // Nobody else can take client 0 over: a join without (or with a wrong) credential is refused.
  for (const credential of [undefined, "guessed"]) {
    response = await joinAs({ ...join, credential });
    assertEquals(response.status, 403);
    assert((await response.text()).includes("only that device"));
  }
  // The same device, restarted, shows its credential: its new session replaces the old one.
  const second = (await (await joinAs({ ...join, credential: first.credential })).json()).session;
  response = await call(`/task?client=0&session=${first.session}`);
  assertEquals(
    [response.status, await response.text()],
    [409, "another process joined as client 0 after this one"],
  );
  // The live session gets its task; an answer nobody asked for is refused.
  const fit = endpoints[0].fit(1, 2, null, () => {});
  response = await call(`/task?client=0&session=${second}`);
  assertEquals(JSON.parse(response.headers.get("x-comigs-task")!), {
    kind: "fit",
    round: 1,
    steps: 2,
    hasParameters: false,
  });
  await response.arrayBuffer();
  response = await call(`/reply?client=0&session=${second}`, {
    method: "POST",
    headers: { "x-comigs-reply": JSON.stringify({ kind: "error", message: "out of memory" }) },
  });
  assertEquals(response.status, 200);
  await assertRejects(() => fit, Error, "client 0: out of memory");
  response = await call(`/reply?client=0&session=${second}`, {
    method: "POST",
    headers: { "x-comigs-reply": JSON.stringify({ kind: "error", message: "again" }) },
  });
  assertEquals([response.status, await response.text()], [
    409,
    "client 0 answered, but no task was pending",
  ]);

  const dir = await Deno.makeTempDir();
  for (const method of ["centralized", "pretrained"] as const) {
    await assertRejects(
      () =>
        serveRun({ options: options(`${dir}/${method}`, method) }, {
          progress: quiet(),
          hostname: "127.0.0.1",
          port: 0,
        }),
      RangeError,
      `method ${method} is not a federation`,
    );
  }
  await Deno.remove(dir, { recursive: true });
});
