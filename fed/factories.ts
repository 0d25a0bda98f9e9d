// The pieces of a run built from its options, the same wherever the run happens (simulated in
// one process, a networked client, a browser tab): a client with its adapters, data and
// schedule, and the server's strategy holding the initial shared tensors.
import type { Engine } from "../engine/device.ts";
import { type AdapterConfig, adapterRole, adapterShapes, initAdapters } from "../model/adapters.ts";
import type { BaseConfig } from "../model/base.ts";
import type { BaseModel } from "../model/base_model.ts";
import type { NamedTensor } from "../model/safetensors.ts";
import { mix } from "../model/rng.ts";
import { Client } from "./client.ts";
import { isShared, METHOD_SPECS, methodAdapterConfig, methodInitAdapters } from "./methods.ts";
import type { TrainOptions } from "./options.ts";
import { PclStrategy } from "./pcl.ts";
import { Guard, noiseKey } from "./guard.ts";
import { GaussianNoise } from "./noise.ts";
import { localDpNormBound } from "./privacy.ts";
import { FedAvgStrategy, type Strategy } from "./strategy.ts";
import { defaultMaxUpdateNorm, shapesOf } from "./validate_update.ts";
import type { Streams } from "./streams.ts";

/** Expert steps per round of a client of `options` (the pooled one takes every category's share,
 * so it trains on as many tokens as the whole federation does). */
export function localSteps(options: TrainOptions): number {
  const spec = METHOD_SPECS[options.method];
  return spec.pooled ? options.localSteps * options.clients : options.localSteps;
}

/** Client `id` of a run: its adapters from the method's init, its data, its schedule. */
export function makeClient(
  engine: Engine,
  model: BaseModel,
  options: TrainOptions,
  data: Streams,
  id: number,
): Client {
  const spec = METHOD_SPECS[options.method];
  const config = clientAdapterConfig(options, model.config, id);
  const init = methodInitAdapters(spec, model.config, config, mix(options.seed, id, 0));
  const schedule = {
    batch: options.batch,
    seq: options.seq,
    lr: options.lr,
    totalSteps: options.rounds * localSteps(options),
    routerEvery: options.routerEvery,
    routerSteps: options.routerSteps,
  };
  return new Client(
    engine,
    model,
    id,
    { name: data.name, train: data.train, router: options.routerOnTrain ? data.train : data.val },
    spec,
    config,
    init,
    schedule,
    options.seed,
    options.dp === "local"
      ? {
        settings: { clip: options.dpClip, noise: options.dpNoise },
        // Each client its own stream: a secret key, or one derived from --dp-seed.
        noise: GaussianNoise.fromKey(
          noiseKey(options.dpSeed === null ? null : mix(options.dpSeed, id, LOCAL_NOISE)),
        ),
      }
      : null,
  );
}

/** mix()'s purpose number of a client's local DP noise (0–2: weights and batch streams). */
const LOCAL_NOISE = 4;

/** The adapters' configuration of client `id` under the run's method. */
export function clientAdapterConfig(
  options: TrainOptions,
  base: BaseConfig,
  id: number,
): AdapterConfig {
  const { rank, alpha, scaling, topK, lbCoef, lbRho, loraTargets } = options;
  // No loraTargets (null, or a server's options from before it existed): every projection.
  const targets = loraTargets ? { targets: [...loraTargets] } : {};
  return methodAdapterConfig(
    METHOD_SPECS[options.method],
    { rank, alpha, scaling, topK, lbCoef, lbRho, ...targets },
    options.experts[id],
    base,
  );
}

/** The server of a run, holding the initial shared tensors every client starts from (method.md
 * §2): FedAvg's average, or PCL's bundle. It needs the base model's config, not its weights. */
export function makeStrategy(options: TrainOptions, base: BaseConfig): Strategy {
  const spec = METHOD_SPECS[options.method];
  const config = clientAdapterConfig(options, base, 0);
  const serverInit = initAdapters(base, config, options.seed);
  const initial = new Map<string, NamedTensor>();
  const syncSpec = {
    ...spec,
    shares: spec.shares === "all" ? "all" as const : "generalist" as const,
  };
  for (const [name, shape] of adapterShapes(base, config)) {
    if (isShared(syncSpec, adapterRole(name))) {
      initial.set(name, { shape, data: serverInit.get(name)! });
    }
  }
  const guard = new Guard(options, maxUpdateNorm(options, initial), shapesOf(initial));
  return spec.personal
    ? new PclStrategy(initial, guard)
    : new FedAvgStrategy(initial, spec.shares !== "none", guard);
}

/**
 * The largest update norm the server accepts: the option, or what an honest client can reach in
 * a round (2·lr per coordinate and step; under local DP, plus its noise).
 */
export function maxUpdateNorm(
  options: TrainOptions,
  shared: ReadonlyMap<string, NamedTensor>,
): number {
  if (options.maxUpdateNorm !== null) return options.maxUpdateNorm;
  const values = [...shared.values()].reduce((n, t) => n + t.data.length, 0);
  const honest = defaultMaxUpdateNorm(options.lr, localSteps(options), values);
  if (options.dp !== "local") return honest;
  return Math.max(
    honest,
    localDpNormBound({ clip: options.dpClip, noise: options.dpNoise }, values),
  );
}
