// The client's side of the transport contract: what a client of a networked run needs from the
// server, whatever carries it. fed/http_link.ts speaks our own HTTP server (fed/http_server.ts);
// a Flower node speaks a Flower SuperLink. The client's work (fed/client_loop.ts) is the same.
import type { StepReport } from "./client.ts";

/** What the server asks of a client next. Parameters are an encoded Message (null: none). */
export type Task =
  | { kind: "fit"; round: number; steps: number; parameters: Uint8Array | null }
  | { kind: "evaluate"; round: number; parameters: Uint8Array | null }
  | { kind: "done" };

/** A client's answer to a task (a fit's message of shared tensors travels beside it). */
export type Reply =
  | { kind: "fit"; round: number; step: number; meanLoss: number }
  | { kind: "evaluate"; round: number; step: number; losses: number[] }
  | { kind: "error"; message: string };

/** How a client introduces itself. */
export interface Join {
  name: string;
  trainTokens: number;
  /** The frozen base model's test perplexity on this client's test split (null: not asked). */
  pretrainedPpl: number | null;
  /** The credential the server gave this client id on its first join (none before). */
  credential?: string;
}

export interface ServerLink {
  /**
   * Whether the server may leave this client out of rounds (a Flower ServerApp samples the nodes
   * online, and a message that a killed process had pulled is lost with it): the client then
   * fits the next round it is asked for from its latest state. Our own server never does (a task
   * waits until it is answered), so there a gap means a folder of another run.
   */
  readonly skipsRounds?: boolean;
  /**
   * Introduces this client. `hello` builds the introduction, measuring the base model only when
   * the server still needs it; the link calls it again if the server forgets the client (a
   * restarted server).
   */
  join(hello: (needPretrained: boolean) => Promise<Join>): Promise<void>;
  /** The next task, waiting as long as it takes. */
  nextTask(): Promise<Task>;
  /** Answers the current task; a fit's reply comes with the message of its shared tensors. */
  reply(reply: Reply, result?: Uint8Array): Promise<void>;
  /** A training step's report, for the server's progress display (best effort, in order). */
  progress(report: StepReport): void;
}
