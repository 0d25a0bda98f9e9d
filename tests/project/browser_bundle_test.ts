// mod.ts is promised to bundle for browsers (README "As a library"): the bundle must hold no
// static import of a Node or Deno built-in module, which a browser cannot load. Built-ins used
// only where files are read (corpora, the Hub download) are imported when first needed.
import { assertEquals } from "../assert.ts";

Deno.test("mod.ts bundles for browsers without a static import of a built-in module", async () => {
  const dir = await Deno.makeTempDir();
  const out = `${dir}/mod.js`;
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--platform",
      "browser",
      new URL("../../mod.ts", import.meta.url).pathname,
      "-o",
      out,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(code, 0, new TextDecoder().decode(stderr));
  const bundle = await Deno.readTextFile(out);
  const staticImports = bundle.match(/^\s*import[^;(]*from\s*"(node|deno):[^"]*"/gm) ?? [];
  assertEquals(staticImports, []);
  await Deno.remove(dir, { recursive: true });
});
