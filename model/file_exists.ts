// Whether a path exists: false only when it does not; any other failure (permissions, I/O) is
// the caller's to see.
export async function fileExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}
