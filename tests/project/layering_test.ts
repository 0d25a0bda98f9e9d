// The layering of the source tree (DEVELOPERS.md: imports point down only, cli → fed → model →
// kernels → engine): every relative import of every source file is read and checked, and the
// import graph must have no cycle. Entry points (cli files run as programs) import no other
// entry point. bench/ and tests/ may import anything; nothing imports them.
import { assert, assertEquals } from "../assert.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const LAYERS = ["engine", "kernels", "model", "fed", "cli"] as const;

/** Every .ts file under `dir` (relative to the root), sorted. */
async function sources(dir: string): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(`${ROOT}${dir}`)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) files.push(...await sources(path));
    else if (entry.name.endsWith(".ts")) files.push(path);
  }
  return files.sort();
}

/** The root-relative paths a file imports or re-exports from (static and dynamic, relative). */
function relativeImports(file: string, text: string): string[] {
  const specifiers = [
    ...text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s+["']([^"']+)["']/gms),
    ...text.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g),
    ...text.matchAll(/^\s*import\s+["']([^"']+)["']/gm),
  ].map((m) => m[1]).filter((s) => s.startsWith("."));
  return specifiers.map((s) => new URL(s, `file:///${file}`).pathname.slice(1));
}

/** A file's layer: its top folder's index in LAYERS (mod.ts sits above them all). */
function layer(file: string): number {
  if (file === "mod.ts") return LAYERS.length;
  return LAYERS.indexOf(file.split("/")[0] as typeof LAYERS[number]);
}

async function importGraph(): Promise<Map<string, string[]>> {
  const files = ["mod.ts", ...(await Promise.all(LAYERS.map(sources))).flat()];
  const graph = new Map<string, string[]>();
  for (const file of files) {
    graph.set(file, relativeImports(file, await Deno.readTextFile(`${ROOT}${file}`)));
  }
  return graph;
}

/** The layering violations of `graph`: an import of a higher layer, or of bench/ or tests/. */
export function layeringViolations(graph: Map<string, string[]>): string[] {
  const problems: string[] = [];
  for (const [file, imports] of graph) {
    for (const target of imports) {
      if (layer(target) < 0) problems.push(`${file} imports ${target} (outside the layers)`);
      else if (layer(target) > layer(file)) {
        problems.push(`${file} imports ${target}: ${file.split("/")[0]} is below it`);
      }
    }
  }
  return problems;
}

/** One cycle of `graph` (as a path that returns to its start), or null. */
export function findCycle(graph: Map<string, string[]>): string[] | null {
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (file: string): string[] | null => {
    if (state.get(file) === "done") return null;
    if (state.get(file) === "open") return [...stack.slice(stack.indexOf(file)), file];
    state.set(file, "open");
    stack.push(file);
    for (const target of graph.get(file) ?? []) {
      const cycle = visit(target);
      if (cycle) return cycle;
    }
    stack.pop();
    state.set(file, "done");
    return null;
  };
  for (const file of [...graph.keys()].sort()) {
    const cycle = visit(file);
    if (cycle) return cycle;
  }
  return null;
}

Deno.test("imports point down the layers only: cli → fed → model → kernels → engine", async () => {
  assertEquals(layeringViolations(await importGraph()), []);
});

Deno.test("the import graph has no cycle", async () => {
  const cycle = findCycle(await importGraph());
  assert(cycle === null, `import cycle: ${cycle?.join(" → ")}`);
});

Deno.test("no entry point imports another entry point", async () => {
  const graph = await importGraph();
  const entryPoints = new Set<string>();
  for (const file of graph.keys()) {
    if (/import\.meta\.main/.test(await Deno.readTextFile(`${ROOT}${file}`))) entryPoints.add(file);
  }
  assert(entryPoints.has("cli/train.ts"), "cli/train.ts should be an entry point");
  const imported = [...graph].flatMap(([file, imports]) =>
    imports.filter((t) => entryPoints.has(t)).map((t) => `${file} imports ${t}`)
  );
  assertEquals(imported, []);
});

Deno.test("the checks catch a downward violation, a cycle and an import of bench/", () => {
  const graph = new Map([
    ["engine/a.ts", ["model/b.ts"]],
    ["model/b.ts", ["engine/a.ts", "bench/x.ts"]],
  ]);
  assertEquals(layeringViolations(graph), [
    "engine/a.ts imports model/b.ts: engine is below it",
    "model/b.ts imports bench/x.ts (outside the layers)",
  ]);
  assertEquals(findCycle(graph), ["engine/a.ts", "model/b.ts", "engine/a.ts"]);
});
