// Command-line flags of the bench programs.

/** A flag's value as a positive integer, or one message naming the program and flag, exit 2. */
export function positiveFlag(program: string, name: string, text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) {
    console.error(`${program}: --${name} ${text} must be a positive integer`);
    Deno.exit(2);
  }
  return value;
}
