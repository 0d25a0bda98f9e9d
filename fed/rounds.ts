// The server's side of a run: the rounds loop (method.md §3), the same whether its clients are
// in this process (fed/simulation.ts) or elsewhere (fed/http_server.ts, the Flower App drives
// its own): evaluate everyone before training, then per round configure every client's fit,
// aggregate the results, and evaluate every few rounds and at the end.
import { evaluationProgress, type Progress } from "../model/progress.ts";
import type { ClientEndpoint } from "./endpoint.ts";
import { localSteps } from "./factories.ts";
import type { TrainOptions } from "./options.ts";
import type { Measurement } from "./records.ts";
import type { Strategy } from "./strategy.ts";

/** What the caller sees of the rounds as they go. */
export interface RoundHooks {
  progress: Progress;
  /** A metric record; the caller keeps them (finalTestPpl reads the result from them). */
  record(m: Measurement): Promise<void>;
  /** After each completed round (to save the state a resumed run continues from). */
  roundDone(round: number): Promise<void>;
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
  // Clients of other processes work at once; those of this one take turns on its GPU.
  const each = async <T, R>(items: T[], ask: (item: T) => Promise<R>): Promise<R[]> => {
    if (parallel) return await Promise.all(items.map(ask));
    const replies: R[] = [];
    for (const item of items) replies.push(await ask(item));
    return replies;
  };
  const steps = localSteps(options);
  const clock = new RunClock(options, startRound, steps * endpoints.length);
  const evaluate = async (round: number) => {
    const started = performance.now();
    const ppl: number[] = [];
    const replies = await each(
      [...strategy.configureEvaluate(round, ids)],
      ([id, instructions]) =>
        endpoints[id].evaluate(
          round,
          instructions.parameters,
          evaluationProgress(progress, `round ${round}: client ${id} (${endpoints[id].name}) test`),
        ),
    );
    clock.evaluated((performance.now() - started) / 1000);
    for (const [id, { step, losses }] of replies.entries()) {
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
  const total = options.rounds * steps * endpoints.length;
  let done = round * steps * endpoints.length, tokens = 0, seconds = 0;
  progress.total = total;
  progress.begin(done);
  while (round < stopAt) {
    round++;
    const fitStarted = performance.now();
    const replies = await each([...strategy.configureFit(round, ids)], ([id, instructions]) => {
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
    for (const [id, reply] of replies.entries()) {
      await record({ round, step: reply.step, client: id, split: "train", loss: reply.meanLoss });
    }
    strategy.aggregateFit(round, replies.map((r) => r.result));
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
  // Runs from before --eval-every evaluated every round.
  return round === 0 || round % (options.evalEvery ?? 1) === 0 || round === options.rounds;
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
