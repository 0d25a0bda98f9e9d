// The server's side of a run: the rounds loop (method.md §3), the same whether its clients are
// in this process (fed/simulation.ts) or elsewhere (fed/http_server.ts, the Flower App drives
// its own): evaluate everyone before training, then per round configure every client's fit,
// aggregate the results, and evaluate every few rounds and at the end.
import { evaluationProgress, type Progress } from "../model/progress.ts";
import type { ClientEndpoint } from "./endpoint.ts";
import { localSteps } from "./factories.ts";
import type { TrainOptions } from "./options.ts";
import { PrivacySpent } from "./privacy.ts";
import type { Measurement, RunEvent } from "./records.ts";
import type { Strategy } from "./strategy.ts";

/** What the caller sees of the rounds as they go. */
export interface RoundHooks {
  progress: Progress;
  /** A metric record; the caller keeps them (finalTestPpl reads the result from them). */
  record(m: Measurement): Promise<void>;
  /** After each completed round (to save the state a resumed run continues from). */
  roundDone(round: number): Promise<void>;
  /** What else happened in a round (refused results, sampling, privacy spent). */
  event?(e: RunEvent): Promise<void>;
  /** Stop after this many completed rounds, as if the process were killed. */
  stopAfterRound?: number;
}

/**
 * The server's side of a run from `startRound`: evaluates every client before training (round
 * 0), then per round configures each client's fit, aggregates the results in client order,
 * evaluates every `evalEvery` rounds and at the end, and reports each completed round. Records
 * come in client order whether clients are asked one after another or at once.
 */
export async function runRounds(
  { options, strategy, endpoints, testIds, startRound, parallel = false }: {
    options: TrainOptions;
    strategy: Strategy;
    endpoints: readonly ClientEndpoint[];
    /** Endpoint i's losses[k] is the test loss of category testIds[i][k]. */
    testIds: readonly number[][];
    startRound: number;
    /** Ask every client at once (they are other processes) instead of one after another. */
    parallel?: boolean;
  },
  hooks: RoundHooks,
): Promise<number> {
  const { progress, record } = hooks;
  const ids = endpoints.map((e) => e.id);
  const event = hooks.event ?? (() => Promise.resolve());
  // Clients of other processes work at once; those of this one take turns on its GPU. A client
  // elsewhere that fails (or answers out of turn) is left out of the round, recorded; one of
  // this process failing is this process's failure and ends the run.
  const each = async <T, R>(
    round: number,
    items: [number, T][],
    ask: (id: number, item: T) => Promise<R>,
  ): Promise<[number, R][]> => {
    const answered: [number, R][] = [];
    if (!parallel) {
      for (const [id, item] of items) answered.push([id, await ask(id, item)]);
      return answered;
    }
    const settled = await Promise.allSettled(items.map(([id, item]) => ask(id, item)));
    for (const [k, outcome] of settled.entries()) {
      const client = items[k][0];
      if (outcome.status === "fulfilled") answered.push([client, outcome.value]);
      else {
        const reason = `client ${client}, round ${round}: left out: ${outcome.reason.message}`;
        await event({ round, event: "refused", client, reason });
        progress.log(reason);
      }
    }
    return answered;
  };
  const steps = localSteps(options);
  // Clients training per round (all, or --clients-per-round; under central DP's Poisson draw,
  // its expected number).
  const perRound = options.clientsPerRound ?? endpoints.length;
  const clock = new RunClock(options, startRound, steps * perRound);
  const privacy = options.dp === "none" ? null : new PrivacySpent(
    { mode: options.dp, clip: options.dpClip, noise: options.dpNoise, delta: options.dpDelta },
    perRound / endpoints.length,
    endpoints.length,
  );
  const evaluate = async (round: number) => {
    const started = performance.now();
    const ppl: number[] = [];
    const replies = await each(
      round,
      [...strategy.configureEvaluate(round, ids)],
      (id, instructions) =>
        endpoints[id].evaluate(
          round,
          instructions.parameters,
          evaluationProgress(progress, `round ${round}: client ${id} (${endpoints[id].name}) test`),
        ),
    );
    clock.evaluated((performance.now() - started) / 1000);
    for (const [id, { step, losses }] of replies) {
      for (const [k, loss] of losses.entries()) {
        await record({ round, step, client: testIds[id][k], split: "test", loss });
        ppl.push(Math.exp(loss));
      }
    }
    return ppl.reduce((a, b) => a + b, 0) / ppl.length;
  };

  let round = startRound;
  if (round === 0) await evaluate(0);
  const stopAt = Math.min(options.rounds, hooks.stopAfterRound ?? Infinity);
  const total = options.rounds * steps * perRound;
  let done = round * steps * perRound, tokens = 0, seconds = 0;
  progress.total = total;
  progress.begin(done);
  while (round < stopAt) {
    round++;
    const fitStarted = performance.now();
    const assignments = [...strategy.configureFit(round, ids)];
    if (assignments.length < ids.length) {
      await event({ round, event: "sampled", clients: assignments.map(([id]) => id) });
    }
    const replies = await each(round, assignments, (id, instructions) => {
      const endpoint = endpoints[id];
      return endpoint.fit(round, steps, instructions.parameters, (step) => {
        done++;
        tokens += step.tokens;
        seconds += step.seconds;
        clock.stepped((performance.now() - fitStarted) / 1000);
        progress.update({
          step: done,
          context: `round ${round}/${options.rounds} client ${id} (${endpoint.name})`,
          tokensPerSecond: tokens / seconds,
          loss: step.loss,
          etaSeconds: clock.secondsLeft(done),
        });
      });
    });
    clock.fitted((performance.now() - fitStarted) / 1000);
    for (const [client, reply] of replies) {
      await record({ round, step: reply.step, client, split: "train", loss: reply.meanLoss });
    }
    const outcome = strategy.aggregateFit(
      round,
      replies.map(([client, reply]) => ({ client, bytes: reply.result })),
    );
    for (const { client, reason } of outcome.refusals) {
      await event({ round, event: "refused", client, reason });
      progress.log(reason);
    }
    if (outcome.kept !== null) {
      await event({ round, event: "kept-global", reason: outcome.kept });
      progress.log(outcome.kept);
    }
    if (privacy) {
      const epsilon = privacy.epsilonAfter(round, (r) => strategy.sample(r, ids));
      await event({ round, event: "privacy", epsilon, delta: options.dpDelta });
    }
    const meanPpl = evaluatesAfter(options, round) ? await evaluate(round) : undefined;
    await hooks.roundDone(round);
    if (meanPpl !== undefined && round < options.rounds) {
      progress.log(`round ${round}: mean test perplexity ${meanPpl.toFixed(2)}`);
    }
  }
  progress.done();
  if (total === 0) progress.log("no training steps");
  return round;
}

/** Whether the test split is evaluated after `round` (round 0: before any training). */
function evaluatesAfter(options: TrainOptions, round: number): boolean {
  return round === 0 || round % options.evalEvery === 0 || round === options.rounds;
}

/**
 * The time a run has left, from what this session measured: wall seconds per training step
 * (fit phases, overheads included) and per evaluation, times the steps and evaluations to come.
 */
class RunClock {
  #fitSeconds = 0;
  #roundSeconds = 0;
  #steps = 0;
  #evalSeconds = 0;
  #evals = 0;
  #evalsLeft = 0;
  readonly #totalSteps: number;

  constructor(options: TrainOptions, startRound: number, stepsPerRound: number) {
    for (let r = startRound; r <= options.rounds; r++) {
      if ((r > startRound || r === 0) && evaluatesAfter(options, r)) this.#evalsLeft++;
    }
    this.#totalSteps = options.rounds * stepsPerRound;
  }

  /** A step of the current fit phase ended, `roundSeconds` into it. */
  stepped(roundSeconds: number): void {
    this.#steps++;
    this.#roundSeconds = roundSeconds;
  }

  fitted(roundSeconds: number): void {
    this.#fitSeconds += roundSeconds;
    this.#roundSeconds = 0;
  }

  evaluated(seconds: number): void {
    this.#evalSeconds += seconds;
    this.#evals++;
    this.#evalsLeft--;
  }

  /** Seconds left once `done` steps of the run are done (NaN before any step was timed). */
  secondsLeft(done: number): number {
    if (this.#steps === 0) return NaN;
    const perStep = (this.#fitSeconds + this.#roundSeconds) / this.#steps;
    const perEval = this.#evals ? this.#evalSeconds / this.#evals : 0;
    return (this.#totalSteps - done) * perStep + this.#evalsLeft * perEval;
  }
}
