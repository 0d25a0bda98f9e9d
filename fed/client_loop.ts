// A networked client's life, whatever carries its messages (fed/server_link.ts): join the
// server, then answer its tasks (evaluate, fit) until the run is done, keeping its state after
// every fit. A Deno process (fed/join.ts), a browser tab (cli/browser_page.ts) and a Flower node
// run the same loop. Where the client's state is kept is the caller's (StateStore): files in
// Deno, memory in a tab.
import { encodeAdapters } from "../model/adapters.ts";
import type { BaseModel } from "../model/base_model.ts";
import { evaluationProgress, type Progress } from "../model/progress.ts";
import type { Client } from "./client.ts";
import { LocalEndpoint } from "./endpoint.ts";
import type { TrainOptions } from "./options.ts";
import type { Reply, ServerLink } from "./server_link.ts";
import { basePerplexity } from "./simulation.ts";
import type { Streams } from "./streams.ts";

/** A client's state after its last fit and the one before (a fit the server lost is redone). */
export interface StateStore {
  /** Loads the latest state there is and returns its round (0 when there is none yet). */
  restore(): Promise<number>;
  /** Goes back to the state before the latest fit and returns its round. */
  previous(): Promise<number>;
  /** Keeps the client's state after the fit of `round`; the latest becomes the previous one. */
  save(round: number): Promise<void>;
}

/** A StateStore in memory (a browser tab: the state lives as long as the tab). */
export class MemoryStates implements StateStore {
  #states: { round: number; state: Awaited<ReturnType<Client["exportState"]>> }[] = [];

  constructor(readonly client: Client) {}

  async restore(): Promise<number> {
    if (!this.#states.length) this.#states = [{ round: 0, state: await this.client.exportState() }];
    return this.#states.at(-1)!.round;
  }

  previous(): Promise<number> {
    const prev = this.#states.at(-2);
    if (!prev) throw new Error("no state before the latest fit: cannot redo it");
    this.client.importState(prev.state);
    return Promise.resolve(prev.round);
  }

  async save(round: number): Promise<void> {
    this.#states = [...this.#states.slice(-1), { round, state: await this.client.exportState() }];
  }
}

/**
 * Client `client` of a networked run, holding `data` (its category), answering the tasks that
 * come through `link` until the run is done; returns the rounds it fitted. `saveAdapters` gets
 * its adapters file after the last evaluation (the run's result for it).
 */
export async function clientLoop(
  { link, options, model, client, data, store, progress, saveAdapters }: {
    link: ServerLink;
    options: TrainOptions;
    model: BaseModel;
    client: Client;
    data: Streams;
    store: StateStore;
    progress: Progress;
    saveAdapters(bytes: Uint8Array): Promise<void>;
  },
): Promise<number> {
  const id = client.id;
  const endpoint = new LocalEndpoint(client, [data.test]);
  try {
    let fitted = await store.restore();
    progress.log(
      `client ${id} (${data.name}): ${data.train.length} training tokens` +
        (fitted ? `, continuing after round ${fitted}` : ""),
    );
    await link.join(async (needPretrained) => ({
      name: data.name,
      trainTokens: data.train.length,
      pretrainedPpl: needPretrained
        ? await basePerplexity(
          model,
          data.test,
          options.batch,
          options.seq,
          evaluationProgress(progress, `base model: client ${id} (${data.name}) test`),
        )
        : null,
    }));
    while (true) {
      const task = await link.nextTask();
      if (task.kind === "done") break;
      let reply: Reply, result: Uint8Array | undefined;
      try {
        if (task.kind === "evaluate") {
          reply = {
            kind: "evaluate",
            round: task.round,
            ...await endpoint.evaluate(
              task.round,
              task.parameters,
              evaluationProgress(progress, `round ${task.round}: client ${id} (${data.name}) test`),
            ),
          };
          // The last evaluation holds the final shared tensors: the run's result for this client.
          if (task.round === options.rounds) {
            await saveAdapters(encodeAdapters(model.config, {
              config: client.adapters.config,
              values: await client.adapters.values(),
            }));
          }
        } else {
          if (fitted === task.round) fitted = await store.previous();
          if (fitted > task.round - 1 || (fitted < task.round - 1 && !link.skipsRounds)) {
            throw new Error(
              `its state is after round ${fitted} but the server asks for round ${task.round}; ` +
                `restart it with this run's folder`,
            );
          }
          progress.total = options.rounds * task.steps;
          const first = (task.round - 1) * task.steps;
          progress.begin(first);
          let taken = 0;
          const fit = await endpoint.fit(task.round, task.steps, task.parameters, (step) => {
            progress.update({
              step: first + ++taken,
              context: `client ${id} (${data.name}) round ${task.round}/${options.rounds}`,
              tokensPerSecond: step.tokens / step.seconds,
              loss: step.loss,
            });
            link.progress(step);
          });
          await store.save(task.round);
          fitted = task.round;
          result = fit.result;
          reply = { kind: "fit", round: task.round, step: fit.step, meanLoss: fit.meanLoss };
        }
      } catch (e) {
        await link.reply({ kind: "error", message: (e as Error).message }).catch(() => {});
        throw e;
      }
      // A server that went away meanwhile asks again once it is back (the fit is then redone
      // from the state before it, with the same bits).
      await link.reply(reply, result).catch((e: Error) =>
        progress.log(`the server did not take the reply of round ${task.round}: ${e.message}`)
      );
    }
    progress.done();
    return fitted;
  } finally {
    endpoint.dispose();
  }
}
