// A PNG of a routing page (`deno task routing --html`) for the README: the page's header (layer
// selector, colour scale) and one client's tokens and summary, drawn by headless Chromium.
//   deno run -A scripts/routing_screenshot.ts PAGE.html OUT.png [--client ID] [--view K]
//     [--width PX] [--height PX]
// --client: the client shown (default 0); --view: the selector's entry drawn (default 0, the
// first layer); --width: the window's width in CSS pixels (default 1100); --height: keep the top
// PX pixels of the picture (default: all of it).
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { CHROMIUM_ARGS, DEFAULT_CHROMIUM } from "../cli/browser.ts";

const USAGE = "usage: deno run -A scripts/routing_screenshot.ts PAGE.html OUT.png " +
  "[--client ID] [--view K] [--width PX] [--height PX]";

/** One line on stderr and exit 1 (2 for a usage error), no stack trace. */
function fail(message: string, code = 1): never {
  console.error(`error: ${message}`);
  Deno.exit(code);
}

function parse() {
  try {
    return parseArgs({
      args: Deno.args,
      options: {
        client: { type: "string", default: "0" },
        view: { type: "string", default: "0" },
        width: { type: "string", default: "1100" },
        height: { type: "string" },
      },
      allowPositionals: true,
    });
  } catch (e) {
    return fail(`${(e as Error).message}\n${USAGE}`, 2);
  }
}

/** A flag's value as a whole number of pixels ≥ 1. */
function pixels(name: string, text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1) {
    fail(`--${name} must be a whole number of pixels ≥ 1, got "${text}"`, 2);
  }
  return Number(text);
}

const { values, positionals } = parse();
if (positionals.length !== 2) fail(USAGE, 2);
const [html, png] = positionals;
const width = pixels("width", values.width);
const height = values.height === undefined ? undefined : pixels("height", values.height);
if (!(await Deno.stat(html).catch(() => null))?.isFile) {
  fail(`${html}: no such file (write it with deno task routing --run DIR --html)`);
}

const { chromium } = await import("playwright-core");
const browser = await chromium.launch({
  executablePath: Deno.env.get("CHROMIUM") ?? DEFAULT_CHROMIUM,
  args: CHROMIUM_ARGS,
});
// A problem found in the page, reported once the browser is closed.
let problem: string | undefined;
try {
  const page = await browser.newPage({ viewport: { width, height: 600 } });
  await page.goto(pathToFileURL(html).href);
  const views = await page.evaluate(`document.querySelectorAll("#view option").length`) as number;
  const shown = await page.evaluate(`(() => {
    const sections = [...document.querySelectorAll("section.client")];
    sections.forEach((s) => s.hidden = s.dataset.client !== ${JSON.stringify(values.client)});
    return sections.filter((s) => !s.hidden).length;
  })()`);
  if (!(Number(values.view) >= 0 && Number(values.view) < views)) {
    problem = `--view must be an integer in 0..${views - 1} (the page's views), got ${values.view}`;
  } else if (shown !== 1) problem = `${html} has no client ${values.client}`;
  else {
    await page.selectOption("#view", values.view);
    const clip = height === undefined ? undefined : { x: 0, y: 0, width, height };
    await page.screenshot({ path: png, fullPage: true, clip });
  }
} finally {
  await browser.close();
}
if (problem) fail(problem);
