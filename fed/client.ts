// A device in the federation (method.md §3). It owns its data (token streams), its adapters
// (E_i experts, attention LoRA, router), and two AdamW states: one for the LoRA tensors (the
// experts' optimiser, cosine learning rate) and one for the routers (constant learning rate).
// Each training step is recorded once on its own tape and replayed: an expert step minimises the
// training loss over the LoRA tensors with the routers frozen; a router step minimises the loss
// on a validation batch (or a training batch, --router-on-train) over the routers alone; pFedMoE
// trains both in one step on the training loss. Every step zeroes the gradients of exactly the
// tensors it updates first, so the two optimisers never see each other's gradients.
import type { Command, Engine } from "../engine/device.ts";
import { AdamW, type AdamWState } from "../model/optim.ts";
import { Tape, zeroGrad } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { type AdapterConfig, adapterRole, AdapterTensors } from "../model/adapters.ts";
import { forwardAdapted } from "../model/comigs.ts";
import { StreamEvaluator } from "../model/evaluate.ts";
import { cosineLr } from "../model/schedule.ts";
import type { BaseModel } from "../model/base_model.ts";
import { TokenBatch } from "../model/batch.ts";
import { BatchSampler } from "../model/pretrain_data.ts";
import { mix } from "../model/rng.ts";
import type { NamedTensor } from "../model/safetensors.ts";
import { decodeMessage, encodeMessage } from "./message.ts";
import { isShared, type MethodSpec } from "./methods.ts";
import { isBundle, PERSONAL_WINDOWS, personalMix } from "./pcl.ts";
import { GaussianNoise, type NoiseState } from "./noise.ts";
import { type DpSettings, localDpTensors } from "./privacy.ts";

export interface ClientData {
  name: string;
  train: Uint32Array;
  /** Where router batches come from: the validation stream, or the train stream. */
  router: Uint32Array;
}

export interface Schedule {
  batch: number;
  seq: number;
  lr: number;
  /** Expert steps of the whole run (R·T): the cosine's length. */
  totalSteps: number;
  /** P: a router phase after every P expert steps (counted over all rounds). */
  routerEvery: number;
  /** Q: router steps per phase. */
  routerSteps: number;
}

/** The optimisers' shared hyperparameters (method.md §3). */
const BETAS: [number, number] = [0.9, 0.95];
const WEIGHT_DECAY = 0.01;

/** What a resumed run needs to continue this client exactly. */
export interface ClientState {
  step: number;
  trainRng: number;
  routerRng: number;
  adapters: Map<string, Float32Array>;
  experts: AdamWState;
  routers?: AdamWState;
  /** Local DP: where the client's noise stream stands. */
  noise?: NoiseState;
}

/** Local DP's settings and the client's own noise stream. */
export interface LocalPrivacy {
  settings: Pick<DpSettings, "clip" | "noise">;
  noise: GaussianNoise;
}

export interface StepReport {
  /** Training cross-entropy of the expert step just taken. */
  loss: number;
  tokens: number;
  seconds: number;
}

/** The expert learning rate at expert step `step` (0-based): cosine from lr to lr/10. */
export function expertLr(schedule: Schedule, step: number): number {
  return cosineLr(schedule.lr, Math.min(step / schedule.totalSteps, 1));
}

export class Client {
  readonly adapters: AdapterTensors;
  /** Expert steps taken over all rounds. */
  step = 0;
  readonly #batch: TokenBatch;
  readonly #trainSampler: BatchSampler;
  readonly #routerSampler: BatchSampler;
  readonly #tapes: Tape[] = [];
  /** The expert step's training cross-entropy [1]. */
  readonly #trainLoss: Tensor;
  readonly #expertCommands: () => Command[];
  readonly #routerCommands?: () => Command[];
  readonly #expertOpt: AdamW;
  #routerOpt?: AdamW;
  /** PCL: the perplexity of each bundled client's tensors on this client's validation windows. */
  readonly #personalEvaluator?: StreamEvaluator;
  /** PCL: the weights of the last mix, one per client of the bundle in id order. */
  mixWeights: number[] = [];

  constructor(
    readonly engine: Engine,
    readonly model: BaseModel,
    readonly id: number,
    readonly data: ClientData,
    readonly spec: MethodSpec,
    config: AdapterConfig,
    init: ReadonlyMap<string, Float32Array>,
    readonly schedule: Schedule,
    seed: number,
    /** Local DP: the client clips and noises its shared update before it leaves (fed/privacy.ts). */
    readonly privacy: LocalPrivacy | null = null,
  ) {
    const { batch: B, seq: T } = schedule;
    this.adapters = new AdapterTensors(engine, model.config, config, init);
    this.#batch = new TokenBatch(engine, model.config, B, T);
    this.#trainSampler = new BatchSampler(data.train, B, T, mix(seed, id, 1));
    this.#routerSampler = new BatchSampler(data.router, B, T, mix(seed, id, 2));
    const lora = this.adapters.loraParams();
    const routers = this.adapters.routerParams();
    const trainsRouter = spec.router !== "uniform" && routers.length > 0;
    const joint = spec.router === "joint" && trainsRouter;

    // Expert step (and pFedMoE's joint step): LoRA tensors (+ routers when joint) trainable.
    const expertParams = joint ? [...lora, ...routers] : lora;
    this.#setTrainable(expertParams);
    const expertTape = this.#tape();
    const expertOut = forwardAdapted(expertTape, model, this.adapters, this.#batch);
    const expertPass = [...expertTape.forward(), ...expertTape.backward(expertOut.objective)];
    this.#trainLoss = expertOut.loss;
    const adam = { betas: BETAS, weightDecay: WEIGHT_DECAY, lr: schedule.lr };
    this.#expertOpt = new AdamW(engine, lora, adam);
    if (joint) this.#routerOpt = new AdamW(engine, routers, adam);
    this.#expertCommands = () => [
      ...zeroGrad(expertParams),
      ...expertPass,
      ...this.#expertOpt.step(expertLr(schedule, this.step)),
      ...(joint ? this.#routerOpt!.step() : []),
    ];

    // Router step (bi-level): routers alone trainable, on router batches.
    if (trainsRouter && !joint) {
      this.#setTrainable(routers);
      const routerTape = this.#tape();
      const routerOut = forwardAdapted(routerTape, model, this.adapters, this.#batch);
      const routerPass = [...routerTape.forward(), ...routerTape.backward(routerOut.objective)];
      this.#routerOpt = new AdamW(engine, routers, adam);
      this.#routerCommands = () => [
        ...zeroGrad(routers),
        ...routerPass,
        ...this.#routerOpt!.step(),
      ];
    }
    this.#setTrainable([]);
    if (spec.personal) {
      const windows = Math.min(data.router.length, PERSONAL_WINDOWS * B * T + 1);
      this.#personalEvaluator = this.evaluator(data.router.subarray(0, windows));
    }
  }

  /**
   * Loads the shared tensors the server sent (null: nothing this time). A PCL bundle of every
   * client's tensors is mixed here instead (fed/pcl.ts).
   */
  async receive(parameters: Uint8Array | null): Promise<void> {
    if (!parameters) return;
    const message = decodeMessage(parameters, `server message to client ${this.id}`);
    const values = new Map([...message.tensors].map(([name, t]) => [name, t.data]));
    if (!this.#personalEvaluator || !isBundle(values.keys())) {
      return await this.adapters.update(values);
    }
    const evaluator = this.#personalEvaluator;
    const { mixed, weights } = await personalMix(values, async (tensors) => {
      await this.adapters.update(tensors);
      return Math.exp(await evaluator.meanLoss());
    }, this.id);
    this.mixWeights = weights;
    await this.adapters.update(mixed);
  }

  /**
   * Takes `steps` expert steps (with router phases every P steps) and returns the message of
   * the tensors this method shares, for the server.
   */
  async fit(
    round: number,
    steps: number,
    onStep: (report: StepReport) => void,
  ): Promise<Uint8Array> {
    const { batch: B, seq: T, routerEvery, routerSteps } = this.schedule;
    // What the update is measured from under local DP: the shared tensors the round began with.
    const start = this.privacy ? await this.sharedTensors() : new Map();
    for (let s = 0; s < steps; s++) {
      const start = performance.now();
      this.#batch.set(this.#trainSampler.next());
      await this.engine.run(this.#expertCommands(), `client ${this.id} expert step`);
      this.step++;
      const loss = (await this.engine.readF32(this.#trainLoss))[0];
      if (!Number.isFinite(loss)) {
        throw new Error(
          `client ${this.id} (${this.data.name}), step ${this.step}: the training loss is ` +
            `${loss}; try a lower --lr`,
        );
      }
      if (this.#routerCommands && this.step % routerEvery === 0) {
        for (let q = 0; q < routerSteps; q++) {
          this.#batch.set(this.#routerSampler.next());
          await this.engine.run(this.#routerCommands(), `client ${this.id} router step`);
        }
      }
      onStep({ loss, tokens: B * T, seconds: (performance.now() - start) / 1000 });
    }
    const trained = await this.sharedTensors();
    return encodeMessage({
      round,
      sender: this.id,
      trainTokens: this.data.train.length,
      tensors: this.privacy
        ? localDpTensors(start, trained, this.privacy.settings, this.privacy.noise).tensors
        : trained,
    });
  }

  /** The tensors this method sends to the server, under canonical names. */
  async sharedTensors(): Promise<Map<string, NamedTensor>> {
    const shared = new Map<string, NamedTensor>();
    for (const [name, data] of await this.adapters.values()) {
      if (isShared(this.spec, adapterRole(name))) {
        shared.set(name, { shape: this.adapters.shapes.get(name)!, data });
      }
    }
    return shared;
  }

  /** An evaluator of this client's adapted model over every token of `stream`. */
  evaluator(stream: Uint32Array): StreamEvaluator {
    const { batch: B, seq: T } = this.schedule;
    return new StreamEvaluator(
      this.engine,
      this.model.config,
      stream,
      B,
      T,
      (tape, batch) => forwardAdapted(tape, this.model, this.adapters, batch).tokenLosses,
    );
  }

  async exportState(): Promise<ClientState> {
    return {
      step: this.step,
      trainRng: this.#trainSampler.rng.state,
      routerRng: this.#routerSampler.rng.state,
      adapters: await this.adapters.values(),
      experts: await this.#expertOpt.exportState(),
      routers: await this.#routerOpt?.exportState(),
      noise: this.privacy?.noise.state(),
    };
  }

  importState(state: ClientState): void {
    this.step = state.step;
    this.#trainSampler.rng.state = state.trainRng;
    this.#routerSampler.rng.state = state.routerRng;
    this.adapters.load(state.adapters);
    this.#expertOpt.importState(state.experts);
    if (this.#routerOpt) {
      if (!state.routers) throw new Error(`client ${this.id}: saved state lacks the router's`);
      this.#routerOpt.importState(state.routers);
    }
    if (this.privacy) {
      if (!state.noise) throw new Error(`client ${this.id}: saved state lacks its DP noise`);
      this.privacy.noise = GaussianNoise.restore(state.noise);
    }
  }

  dispose(): void {
    for (const tape of this.#tapes) tape.dispose();
    this.#expertOpt.dispose();
    this.#routerOpt?.dispose();
    this.#batch.dispose();
    this.#personalEvaluator?.dispose();
    this.adapters.dispose();
  }

  #tape(): Tape {
    const tape = new Tape(this.engine);
    this.#tapes.push(tape);
    return tape;
  }

  /** Makes exactly `params` (of this client's adapters) require gradients while recording. */
  #setTrainable(params: readonly Tensor[]): void {
    const trainable = new Set(params);
    for (const p of [...this.adapters.loraParams(), ...this.adapters.routerParams()]) {
      p.requiresGrad = trainable.has(p);
    }
  }
}
