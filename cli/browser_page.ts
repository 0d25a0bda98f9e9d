/// <reference lib="dom" />
// The page of `deno task browser` (bundled for browsers by cli/browser.ts): one federated run in
// this tab's WebGPU, with the same code as `deno task train` (fed/simulation.ts), or one client
// of a networked run, with the same code as `deno task join` (fed/client_loop.ts). It fetches the
// run's options, the base model's two files and the categories' token streams from the server
// that served it, and posts back every event (progress, metric records, the clients' adapters,
// the shared tensors), in order, so the terminal shows the run and the run folder gets its files.
import { Engine } from "../engine/device.ts";
import { clientLoop, MemoryStates } from "../fed/client_loop.ts";
import { makeClient } from "../fed/factories.ts";
import { HttpServerLink } from "../fed/http_link.ts";
import { federate } from "../fed/simulation.ts";
import type { Streams } from "../fed/streams.ts";
import { encodeAdapters } from "../model/adapters.ts";
import { parseBaseCheckpoint } from "../model/checkpoint.ts";
import { kernelVariant } from "../kernels/variant.ts";
import { createModel } from "../model/load.ts";
import { serializeSafetensors } from "../model/safetensors.ts";
import type { PageEvent, RunInput } from "./browser_protocol.ts";
import type { EvaluationUpdate, Progress, ProgressUpdate } from "../model/progress.ts";

const status = document.getElementById("status")!;

/** Posts are chained so the server receives events in the order they happened. */
let posted: Promise<void> = Promise.resolve();
function post(path: string, body: BodyInit): Promise<void> {
  posted = posted.then(async () => {
    const response = await fetch(path, { method: "POST", body });
    if (!response.ok) throw new Error(`POST ${path}: ${response.status} ${await response.text()}`);
  });
  return posted;
}
function send(event: PageEvent): Promise<void> {
  if (event.kind === "log") status.textContent += `${event.line}\n`;
  return post("/event", JSON.stringify(event));
}

async function get(path: string): Promise<Response> {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`GET ${path}: ${response.status} ${await response.text()}`);
  return response;
}
const bytes = async (path: string) => new Uint8Array(await (await get(path)).arrayBuffer());
const tokens = async (path: string) => new Uint32Array((await bytes(path)).buffer);

async function main(): Promise<void> {
  const input = await (await get("/run.json")).json() as RunInput;
  const { options } = input;
  const base = parseBaseCheckpoint(
    await (await get("/model/config.json")).text(),
    await bytes("/model/model.safetensors"),
    options.model,
  );
  const categories: Streams[] = [];
  for (const [k, name] of input.categories.entries()) {
    categories.push({
      name,
      train: await tokens(`/data/${k}/train`),
      val: await tokens(`/data/${k}/val`),
      test: await tokens(`/data/${k}/test`),
    });
  }
  const engine = await Engine.create();
  await send({
    kind: "log",
    line: `WebGPU adapter: ${engine.adapterName}${
      engine.isFallbackAdapter ? " (CPU fallback)" : ""
    }; kernels: ${kernelVariant(engine)} (in ${navigator.userAgent})`,
  });
  let total = 0;
  const progress: Progress = {
    get total() {
      return total;
    },
    set total(steps: number) {
      total = steps;
      send({ kind: "total", total });
    },
    begin: (step: number) => send({ kind: "begin", step }),
    update: (update: ProgressUpdate) => send({ kind: "update", update }),
    evaluation: (update: EvaluationUpdate) => send({ kind: "evaluation", update }),
    log: (line: string) => send({ kind: "log", line }),
    done: () => send({ kind: "done" }),
  };

  if (input.mode === "join") {
    // One client of a networked run: its own category, its state in this tab.
    const model = createModel(engine, base.config, base.weights);
    const client = makeClient(engine, model, options, categories[0], input.client);
    await clientLoop({
      link: new HttpServerLink(input.server, input.client, progress),
      options,
      model,
      client,
      data: categories[0],
      store: new MemoryStates(client),
      progress,
      saveAdapters: (adapters) => post("/adapters/0", adapters.slice()),
    });
    client.dispose();
    model.dispose();
    await send({ kind: "result", pretrainedPpl: [] });
  } else {
    const result = await federate(
      engine,
      { options, ...base, categories },
      {
        progress,
        record: (record) => send({ kind: "record", record }),
        event: (event) => send({ kind: "event", event }),
      },
    );
    for (const [id, adapters] of result.adapters.entries()) {
      await post(`/adapters/${id}`, encodeAdapters(base.config, adapters));
    }
    if (result.global) await post("/global", serializeSafetensors(result.global));
    await send({ kind: "result", pretrainedPpl: result.pretrainedPpl });
  }
  await engine.close();
}

main().catch((e: Error) => {
  status.textContent += `error: ${e.message}\n`;
  send({ kind: "error", message: e.message, stack: e.stack ?? "" });
});
