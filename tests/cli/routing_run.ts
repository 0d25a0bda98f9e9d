// A run folder of `deno task train` written by hand (config.json as the trainer writes it, the
// shipped base model, random adapters) and `deno task routing` run on it in a real process: shared
// by the routing report's tests and the routing page's.
import { join } from "node:path";
import {
  type Method,
  METHOD_SPECS,
  methodAdapterConfig,
  methodInitAdapters,
} from "../../fed/methods.ts";
import { TRAIN_DEFAULTS as DEFAULTS, type TrainOptions } from "../../fed/options.ts";
import { saveAdapters } from "../../model/adapters.ts";
import { readConfig } from "../../model/checkpoint.ts";
import { Rng } from "../util.ts";
import { MODEL, options } from "../fed/tiny_run.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
function runOptions(out: string, method: Method, experts: number[]): TrainOptions {
  return {
    ...options(out, method, 1),
    clients: experts.length,
    experts,
    localSteps: 1,
    trainTokens: experts.map(() => null),
  };
}

/**
 * A run folder as `deno task train` leaves it: config.json and, unless `withAdapters` is false,
 * every client's adapters (the method's init with routers N(0, 0.5²) and lora_B N(0, 0.05²),
 * so routing varies from token to token).
 */
export async function writeRun(
  dir: string,
  method: Method,
  experts: number[],
  withAdapters = [true, true],
): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(
    join(dir, "config.json"),
    JSON.stringify(runOptions(dir, method, experts), null, 2),
  );
  const base = await readConfig(MODEL);
  const spec = METHOD_SPECS[method];
  const rng = new Rng(7);
  for (const [id, E] of experts.entries()) {
    if (!withAdapters[id]) continue;
    const config = methodAdapterConfig(spec, { ...DEFAULTS, topK: 2 }, E, base);
    const values = methodInitAdapters(spec, base, config, 100 + id);
    for (const [name, data] of values) {
      if (name.endsWith("router.weight")) data.set(rng.normal(data.length, 0.5));
      if (name.endsWith("lora_B")) data.set(rng.normal(data.length, 0.05));
    }
    await Deno.mkdir(join(dir, "clients", String(id)), { recursive: true });
    await saveAdapters(join(dir, "clients", String(id), "adapters.safetensors"), base, {
      config,
      values,
    });
  }
  return dir;
}

/** `deno task routing ARGS` in its own process. */
export async function routing(args: string[]) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}cli/routing.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code, stdout: text.decode(stdout), stderr: text.decode(stderr) };
}
