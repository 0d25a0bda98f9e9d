// `deno task routing --run DIR`: how a finished training run's clients route function words and
// content words (fed/routing_analysis.ts). Writes DIR/routing.md (also printed) and
// DIR/routing.json; with --html also DIR/routing.html, the page of shaded tokens
// (model/routing_html.ts).
import { Engine } from "../engine/device.ts";
import {
  analyseRouting,
  DEFAULT_MAX_TOKENS,
  DEFAULT_SHOWN_TOKENS,
  planRouting,
} from "../fed/routing_analysis.ts";
import { routingJson, routingMarkdown, type RoutingMeta } from "../model/routing.ts";
import { routingHtml } from "../model/routing_html.ts";
import { writeFileAtomic } from "../model/safetensors.ts";
import { ProgressBar } from "./progress.ts";
import {
  type FlagSpec,
  helpText,
  numberFlag,
  parseFlags,
  runMain,
  UsageError,
  withFlags,
} from "./args.ts";

const USAGE = "deno task routing --run DIR [--layer L] [--max-tokens N] [--html [--html-tokens N]]";
const FLAGS: FlagSpec = {
  run: {
    type: "string",
    help: "a finished run folder of `deno task train` (config.json, clients/<id>/adapters)",
  },
  layer: { type: "string", help: "report only block L (0-based; default: every block)" },
  "max-tokens": {
    type: "string",
    help:
      `test tokens read per client, from the start of its split (default ${DEFAULT_MAX_TOKENS})`,
  },
  html: {
    type: "boolean",
    help: "also write DIR/routing.html: each client's first test tokens shaded by the " +
      "generalist's gate, per layer, beside the summary (a self-contained page)",
  },
  "html-tokens": {
    type: "string",
    option: "shownTokens",
    help: `tokens per client the page shows (default ${DEFAULT_SHOWN_TOKENS})`,
  },
  help: { type: "boolean", help: "show this help" },
};

/** The analysis asked for by the flags (help, or the checked plan). */
export async function parseInvocation(args: string[]) {
  const flags = parseFlags(args, FLAGS, USAGE);
  if (flags.help) return { help: true as const };
  const dir = flags.run;
  if (typeof dir !== "string") {
    throw new UsageError(`--run is required\n\n${helpText(FLAGS, USAGE)}`);
  }
  const html = flags.html === true;
  if (!html && flags["html-tokens"] !== undefined) {
    throw new UsageError("--html-tokens sets the page's length; add --html to write the page");
  }
  const plan = await withFlags(FLAGS, () =>
    planRouting(dir, {
      layer: numberFlag(flags, "layer", "integer"),
      maxTokens: numberFlag(flags, "max-tokens", "integer"),
      shownTokens: numberFlag(flags, "html-tokens", "integer"),
    }));
  return { plan, html };
}

async function main(): Promise<void> {
  const invocation = await parseInvocation(Deno.args);
  if ("help" in invocation) return console.log(helpText(FLAGS, USAGE));
  const { plan, html } = invocation;
  const engine = await Engine.create();
  const progress = new ProgressBar(0);
  const clients = await analyseRouting(engine, plan, progress);
  progress.done();
  const { options } = plan;
  const meta: RoutingMeta = {
    run: plan.dir,
    method: options.method,
    scenario: options.scenario,
    ood: options.ood,
    seed: options.seed,
    seq: options.seq,
    maxTokens: plan.maxTokens,
  };
  const markdown = routingMarkdown(meta, clients);
  const encode = (text: string) => new TextEncoder().encode(text);
  await writeFileAtomic(`${plan.dir}/routing.md`, encode(markdown));
  await writeFileAtomic(
    `${plan.dir}/routing.json`,
    encode(JSON.stringify(routingJson(meta, clients), null, 2) + "\n"),
  );
  if (html) await writeFileAtomic(`${plan.dir}/routing.html`, encode(routingHtml(meta, clients)));
  console.log(markdown);
}

if (import.meta.main) await runMain(main, FLAGS);
