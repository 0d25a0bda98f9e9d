// `deno task serve` and `deno task join` flags: serve takes train's (and --resume) plus where to
// listen and refuses methods that are not a federation; join needs a server, a client id and a
// folder. (tests/fed/network_test.ts runs whole networked federations.)
import { UsageError } from "../../cli/args.ts";
import { parseInvocation as parseJoin } from "../../cli/join.ts";
import { DEFAULT_PORT, parseInvocation as parseServe } from "../../cli/serve.ts";
import { assertEquals, assertThrows } from "../assert.ts";

Deno.test("serve: train's flags plus --host and --port; --resume; only federations", () => {
  const served = parseServe(["--method", "pcl", "--rounds", "3", "--out", "runs/x"]);
  assertEquals("start" in served && [served.hostname, served.port], ["127.0.0.1", DEFAULT_PORT]);
  assertEquals("start" in served && "options" in served.start && served.start.options.rounds, 3);
  const resumed = parseServe(["--resume", "runs/x", "--host", "0.0.0.0", "--port", "0"]);
  assertEquals(resumed, { start: { resume: "runs/x" }, hostname: "0.0.0.0", port: 0 });
  const cases: [string[], string][] = [
    [["--method", "centralized"], "--method centralized is not a federation; serve one of:"],
    [["--method", "pretrained"], "comigs-1g1s, comigs-2g"],
    [["--port", "65536"], "--port must be an integer in 0..65535"],
    [["--resume", "runs/x", "--rounds", "2"], "remove --rounds"],
    [["--clients", "9"], "--clients must be an integer in 1..4"],
  ];
  for (const [args, message] of cases) assertThrows(() => parseServe(args), UsageError, message);
});

Deno.test("join: --server, --client and --out are required and checked", () => {
  assertEquals(
    parseJoin(["--server", "http://10.0.0.2:8700", "--client", "3", "--out", "c3"]),
    { join: { server: "http://10.0.0.2:8700", client: 3, out: "c3", model: undefined } },
  );
  const cases: [string[], string][] = [
    [["--client", "0", "--out", "c"], "missing --server"],
    [["--server", "http://h:1"], "missing --client, --out"],
    [["--server", "h:1", "--client", "0", "--out", "c"], "--server must be an http(s):// address"],
    [["--server", "http://h:1", "--client=-1", "--out", "c"], "--client must be an integer ≥ 0"],
    [["--server", "http://h:1", "--client", "0", "--out", "c", "--rounds", "2"], "Unknown option"],
  ];
  for (const [args, message] of cases) assertThrows(() => parseJoin(args), UsageError, message);
});
