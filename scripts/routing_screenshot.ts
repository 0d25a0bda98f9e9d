// A PNG of a routing page (`deno task routing --html`) for the README: the page's header (layer
// selector, colour scale) and one client's tokens and summary, drawn by headless Chromium.
//   deno run -A scripts/routing_screenshot.ts RUN/routing.html OUT.png [--client 1] [--view 0]
// --client: the client shown (default 0); --view: the selector's entry drawn (default 0, the
// first layer); --width: the window's width in CSS pixels (default 1100).
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { CHROMIUM_ARGS, DEFAULT_CHROMIUM } from "../cli/browser.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  options: {
    client: { type: "string", default: "0" },
    view: { type: "string", default: "0" },
    width: { type: "string", default: "1100" },
  },
  allowPositionals: true,
});
if (positionals.length !== 2) {
  console.error(
    "usage: deno run -A scripts/routing_screenshot.ts PAGE.html OUT.png " +
      "[--client ID] [--view K] [--width PX]",
  );
  Deno.exit(2);
}
const [html, png] = positionals;

/** One line on stderr and exit 1, no stack trace. */
function fail(message: string): never {
  console.error(`error: ${message}`);
  Deno.exit(1);
}

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
  const page = await browser.newPage({ viewport: { width: Number(values.width), height: 600 } });
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
    await page.screenshot({ path: png, fullPage: true });
  }
} finally {
  await browser.close();
}
if (problem) fail(problem);
