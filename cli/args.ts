// Flag parsing shared by the CLIs: node:util's parseArgs (JSR's @std/cli is unreachable here),
// with errors that list what is allowed instead of a stack trace.
import { parseArgs } from "node:util";

export type FlagSpec = Record<string, { type: "string" | "boolean"; help: string }>;

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

export function parseFlags(
  args: string[],
  spec: FlagSpec,
  usage: string,
): Record<string, string | boolean | undefined> {
  try {
    const { values } = parseArgs({
      args,
      options: Object.fromEntries(
        Object.entries(spec).map(([name, { type }]) => [name, { type }]),
      ),
      strict: true,
      allowPositionals: false,
    });
    return values as Record<string, string | boolean | undefined>;
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n\n${helpText(spec, usage)}`);
  }
}

export function helpText(spec: FlagSpec, usage: string): string {
  const width = Math.max(...Object.keys(spec).map((n) => n.length)) + 4;
  return [
    `usage: ${usage}`,
    "",
    ...Object.entries(spec).map(([name, { help }]) => `  --${name.padEnd(width)}${help}`),
  ].join("\n");
}

/** Runs a CLI's main, printing usage and input errors as one clear message (exit code 2). */
/** A TCP port from a flag's text (0: any free one). */
export function parsePort(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text) || Number(text) > 65535) {
    throw new UsageError(`--port must be an integer in 0..65535, got "${text}"`);
  }
  return Number(text);
}

export async function runMain(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    const error = e as Error;
    console.error(`error: ${error.message}`);
    if (Deno.env.get("COMIGS_DEBUG")) console.error(error.stack);
    Deno.exit(error instanceof UsageError ? 2 : 1);
  }
}
