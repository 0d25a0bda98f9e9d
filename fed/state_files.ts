// A networked client's own state in its folder, whatever transport it joined through (our HTTP
// server: fed/join.ts; a Flower SuperLink: fed/flower/node_run.ts): state.safetensors after its
// last fit and state.prev.safetensors after the one before, each written atomically, so a client
// killed at any moment continues from its last fit (or redoes a fit whose reply was lost).
import { readSafetensors, writeSafetensors } from "../model/safetensors.ts";
import type { Client, ClientState } from "./client.ts";
import type { StateStore } from "./client_loop.ts";
import { type StateCounters, stateFromTensors, stateTensors } from "./client_state.ts";

/** The client's state after its last fit and the one before, written atomically. */
export class StateFiles implements StateStore {
  constructor(readonly dir: string, readonly client: Client) {}

  #path(which: "state" | "state.prev") {
    return `${this.dir}/${which}.safetensors`;
  }

  /** Loads the latest state there is and returns its round (0, saving it, when there is none). */
  async restore(): Promise<number> {
    const latest = await this.#read("state") ?? await this.#read("state.prev");
    if (!latest) {
      await this.#write("state", 0);
      return 0;
    }
    this.client.importState(latest.state);
    return latest.round;
  }

  /** Goes back to the state before the latest fit (whose result the server lost). */
  async previous(): Promise<number> {
    const prev = await this.#read("state.prev");
    if (!prev) throw new Error(`${this.#path("state.prev")} is missing: cannot redo a fit`);
    this.client.importState(prev.state);
    return prev.round;
  }

  /** After the fit of `round`: the latest state becomes the previous one. */
  async save(round: number): Promise<void> {
    await Deno.rename(this.#path("state"), this.#path("state.prev")).catch(() => {});
    await this.#write("state", round);
  }

  async #write(which: "state" | "state.prev", round: number): Promise<void> {
    const { tensors, counters } = stateTensors(
      `client.${this.client.id}`,
      await this.client.exportState(),
    );
    await writeSafetensors(this.#path(which), tensors, {
      round: String(round),
      counters: JSON.stringify(counters),
    });
  }

  async #read(
    which: "state" | "state.prev",
  ): Promise<{ round: number; state: ClientState } | null> {
    const path = this.#path(which);
    if (!(await Deno.stat(path).then(() => true, () => false))) return null;
    const { tensors, metadata } = await readSafetensors(path);
    const counters = JSON.parse(metadata.counters ?? "null") as StateCounters | null;
    const round = Number(metadata.round);
    if (!counters || !Number.isInteger(round)) throw new Error(`${path}: not a client state`);
    return { round, state: stateFromTensors(tensors, `client.${this.client.id}`, counters) };
  }
}
