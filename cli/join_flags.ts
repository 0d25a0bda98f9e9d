// The flags of a client joining a networked run, shared by `deno task join` and
// `deno task browser --join`.
import type { JoinOptions } from "../fed/join.ts";
import { type Flags, UsageError } from "./args.ts";

/** A client's options from parsed flags, the server's address under `--<serverFlag>`. */
export function joinFromFlags(flags: Flags, serverFlag: string, help = ""): JoinOptions {
  const text = (flag: string) => flags[flag] as string | undefined;
  const missing = [serverFlag, "client", "out"].filter((f) => text(f) === undefined);
  if (missing.length) throw new UsageError(`missing --${missing.join(", --")}${help}`);
  const server = text(serverFlag)!;
  if (!/^https?:\/\/[^/]+/.test(server)) {
    throw new UsageError(`--${serverFlag} must be an http(s):// address, got "${server}"`);
  }
  if (!/^\d+$/.test(text("client")!)) {
    throw new UsageError(`--client must be an integer ≥ 0, got "${text("client")}"`);
  }
  return { server, client: Number(text("client")), out: text("out")!, model: text("model") };
}
