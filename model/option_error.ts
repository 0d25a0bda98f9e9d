// A library call's option with a value it cannot take. The message names the option as the
// library knows it (`localSteps must be an integer in 1..1000000, got 0`); an entry point that
// took the value from a flag says the same with its flag (`--local-steps must be ...`). Other
// options the problem mentions are written `{name}`, so each reader sees them its own way.
export class OptionError extends RangeError {
  constructor(readonly option: string, readonly problem: string) {
    super(`${option} ${problem.replace(/\{(\w+)\}/g, "$1")}`);
    this.name = "OptionError";
  }

  /** The message with every option named by `name` (a CLI: its flags). */
  restate(name: (option: string) => string): string {
    return `${name(this.option)} ${this.problem.replace(/\{(\w+)\}/g, (_, o) => name(o))}`;
  }
}

/** Checks that `value` is an integer in min..max (without `max`: ≥ min). */
export function checkInteger(option: string, value: number, min: number, max = Infinity): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    const range = max === Infinity ? `≥ ${min}` : `in ${min}..${max}`;
    throw new OptionError(option, `must be an integer ${range}, got ${value}`);
  }
}

/** Checks that `value` is a finite number for which `ok` holds (`range` says which). */
export function checkReal(
  option: string,
  value: number,
  ok: (x: number) => boolean,
  range: string,
): void {
  if (!Number.isFinite(value) || !ok(value)) {
    throw new OptionError(option, `must be a number ${range}, got ${value}`);
  }
}

/** Checks that `value` is one of `allowed`. */
export function checkChoice<T extends string>(
  option: string,
  value: string,
  allowed: readonly T[],
): asserts value is T {
  if (!allowed.includes(value as T)) {
    throw new OptionError(option, `"${value}" is not one of: ${allowed.join(", ")}`);
  }
}
