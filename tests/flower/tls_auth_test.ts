// TLS and SuperNode authentication with `deno task flower-node` (comigs_node.ts) against a real
// flower-superlink started with a test CA's certificate (openssl) and --enable-supernode-auth
// (which Flower allows only with TLS), the operator's way: a node's first start writes its key
// and is refused with one clear error naming the public key file to register; the operator
// registers that file with `flwr supernode register`; without the CA certificate the node gets a
// clear TLS error; with it, the registered node joins over TLS and takes part in a CoMiGS run.
// No stack traces.

import { assert, assertEquals } from "../assert.ts";
import { flowerTest, makeTestCa, NodeProcess, SuperLink } from "./harness.ts";
import { nodeArgs, serverConfig } from "./tiny_comigs.ts";

flowerTest("flower: TLS with a test CA and SuperNode authentication", async () => {
  const tls = await makeTestCa();
  const link = await SuperLink.start({ tls, auth: true });
  const dir = await Deno.makeTempDir({ prefix: "flower-tls-node-" });
  const nodes: NodeProcess[] = [];
  const start = (extra: string[]) => {
    const node = new NodeProcess(nodeArgs(link.url, 0, dir, extra), "comigs_node.ts");
    nodes.push(node);
    return node;
  };
  try {
    const unregistered = start(["--ca-cert", tls.ca]);
    assertEquals((await unregistered.exit()).code, 1);
    assertEquals(
      unregistered.errLines.at(-1),
      "error: the SuperLink refused this node: SuperNode authentication is on and its public " +
        `key is not registered. Register it (flwr supernode register ${dir}/node-key.pub ` +
        "<connection>), then retry",
    );
    assert(!/^\s+at /m.test(unregistered.stderr), `a stack trace leaked:\n${unregistered.stderr}`);

    await link.flwr("supernode", "register", `${dir}/node-key.pub`, "test");

    const noCa = start([]);
    assertEquals((await noCa.exit()).code, 1);
    assert(
      noCa.errLines.at(-1)!.startsWith(`error: TLS to the SuperLink at ${link.url} failed:`) &&
        !/^\s+at /m.test(noCa.stderr),
      noCa.stderr,
    );

    const member = start(["--ca-cert", tls.ca]);
    await member.comigsNodeId();
    const { runId, out } = await link.run({
      ...serverConfig("comigs-1g1s"),
      rounds: 1,
      "min-nodes": 1,
    });
    assertEquals(await link.waitFinished(runId, 300), "finished:completed", await link.log());
    assertEquals((await member.exit()).code, 0, member.stderr);
    const summary = JSON.parse(await Deno.readTextFile(`${out}/summary.json`));
    assertEquals(summary.clients.map((c: { id: number }) => c.id), [0]);
    assert((await Deno.stat(`${dir}/adapters.safetensors`)).isFile);
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await link.stop();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(tls.dir, { recursive: true });
  }
});
