// Flag parsing shared by the CLIs: node:util's parseArgs (JSR's @std/cli is unreachable here),
// with errors that list what is allowed instead of a stack trace. The library names its options
// (OptionError: `localSteps must be ...`); a CLI says the same with the flag it took the value
// from (`--local-steps must be ...`), through its FlagSpec.
import { parseArgs } from "node:util";
import { OptionError } from "../model/option_error.ts";
import { Engine } from "../engine/device.ts";

/** A CLI's flags; `option` is the library option a flag sets when it is not the flag's name in
 * camelCase (e.g. --lora-scaling sets `scaling`). */
export type FlagSpec = Record<
  string,
  { type: "string" | "boolean"; help: string; option?: string }
>;

export type Flags = Record<string, string | boolean | undefined>;

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

export function parseFlags(args: string[], spec: FlagSpec, usage: string): Flags {
  try {
    const { values } = parseArgs({
      args: joinNegativeValues(args, spec),
      options: Object.fromEntries(
        Object.entries(spec).map(([name, { type }]) => [name, { type }]),
      ),
      strict: true,
      allowPositionals: false,
    });
    return values as Flags;
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n\n${helpText(spec, usage)}`);
  }
}

/**
 * `--lr -1` as `--lr=-1`: parseArgs takes a value starting with "-" for another flag, so a
 * negative number would fail as an ambiguous flag instead of reaching the range check.
 */
function joinNegativeValues(args: string[], spec: FlagSpec): string[] {
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const flag = /^--([^=]+)$/.exec(args[i])?.[1];
    const next = args[i + 1];
    if (flag && spec[flag]?.type === "string" && next !== undefined && /^-[\d.]/.test(next)) {
      joined.push(`${args[i]}=${next}`);
      i++;
    } else joined.push(args[i]);
  }
  return joined;
}

export function helpText(spec: FlagSpec, usage: string): string {
  const width = Math.max(...Object.keys(spec).map((n) => n.length)) + 4;
  return [
    `usage: ${usage}`,
    "",
    ...Object.entries(spec).map(([name, { help }]) => `  --${name.padEnd(width)}${help}`),
  ].join("\n");
}

/** The flag of `spec` that sets library option `option` (its camelCase name, or `option`). */
export function flagFor(spec: FlagSpec, option: string): string {
  const named = Object.entries(spec).find(([, f]) => f.option === option)?.[0];
  return named ?? option.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** The library option a flag of `spec` sets. */
export function optionOf(spec: FlagSpec, flag: string): string {
  return spec[flag]?.option ?? flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** `fn()` (or the promise it returns), with a library OptionError restated as a UsageError
 * naming the flag of `spec`. */
export function withFlags<T>(spec: FlagSpec, fn: () => T): T {
  try {
    const result = fn();
    if (result instanceof Promise) {
      return result.catch((e) => {
        throw asUsageError(spec, e);
      }) as T;
    }
    return result;
  } catch (e) {
    throw asUsageError(spec, e);
  }
}

function asUsageError(spec: FlagSpec, e: unknown): unknown {
  return e instanceof OptionError
    ? new UsageError(e.restate((option) => `--${flagFor(spec, option)}`))
    : e;
}

/**
 * A numeric flag's value (undefined when not given); text that is no number is a UsageError
 * (the library checks the range).
 */
export function numberFlag(flags: Flags, name: string, kind: "integer" | "number" = "number") {
  const raw = flags[name];
  if (raw === undefined) return undefined;
  const value = typeof raw === "string" && raw.trim() !== "" ? Number(raw) : NaN;
  if (!Number.isFinite(value)) {
    throw new UsageError(`--${name} must be ${article(kind)}, got "${raw}"`);
  }
  return value;
}

const article = (kind: "integer" | "number") => kind === "integer" ? "an integer" : "a number";

/** A TCP port from a flag's text (0: any free one). */
export function parsePort(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text) || Number(text) > 65535) {
    throw new UsageError(`--port must be an integer in 0..65535, got "${text}"`);
  }
  return Number(text);
}

/**
 * Runs a CLI's main, printing usage and input errors as one clear message (exit code 2; a
 * library OptionError names the flag of `spec`) and any other error as one line (exit code 1).
 * Either way the engines are closed first: exiting with GPU work in flight can abort the process
 * (Engine.close).
 */
export async function runMain(main: () => Promise<void>, spec: FlagSpec = {}): Promise<void> {
  let code = 0;
  try {
    await main();
  } catch (e) {
    const error = asUsageError(spec, e) as Error;
    console.error(`error: ${error.message}`);
    if (Deno.env.get("COMIGS_DEBUG")) console.error(error.stack);
    code = error instanceof UsageError ? 2 : 1;
  }
  await Engine.closeAll();
  if (code !== 0) Deno.exit(code);
}
