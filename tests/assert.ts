// The assertions tests use (JSR's @std/assert is unreachable here, so we keep our own few).
import { deepStrictEqual } from "node:assert/strict";

export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  deepStrictEqual(actual, expected, message);
}

export function assert(condition: unknown, message = "assertion failed"): asserts condition {
  if (!condition) throw new Error(message);
}

/** Asserts `fn` throws an instance of `type` whose message includes (or matches) `pattern`. */
export function assertThrows(
  fn: () => unknown,
  type: new (...args: never[]) => Error = Error,
  pattern?: string | RegExp,
): Error {
  try {
    fn();
  } catch (e) {
    return checkError(e, type, pattern);
  }
  throw new Error(`expected ${type.name} to be thrown, but nothing was`);
}

export async function assertRejects(
  fn: () => Promise<unknown>,
  type: new (...args: never[]) => Error = Error,
  pattern?: string | RegExp,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    return checkError(e, type, pattern);
  }
  throw new Error(`expected ${type.name} to be rejected, but it resolved`);
}

function checkError(
  e: unknown,
  type: new (...args: never[]) => Error,
  pattern?: string | RegExp,
): Error {
  if (!(e instanceof type)) {
    throw new Error(`expected ${type.name}, got ${e instanceof Error ? e.name : typeof e}: ${e}`);
  }
  const matches = pattern === undefined ||
    (typeof pattern === "string" ? e.message.includes(pattern) : pattern.test(e.message));
  if (!matches) throw new Error(`error message "${e.message}" does not match ${pattern}`);
  return e;
}

/** Asserts files `a` and `b` hold the same bytes; the error names both and where they part. */
export async function assertSameFile(a: string, b: string, message?: string): Promise<void> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  const at = x.findIndex((v, i) => v !== y[i]);
  if (x.length === y.length && at < 0) return;
  const where = at >= 0 ? `at byte ${at}` : `in length (${x.length} vs ${y.length} bytes)`;
  throw new Error(`${message ? `${message}: ` : ""}${a} and ${b} differ ${where}`);
}
