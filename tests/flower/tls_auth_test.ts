// TLS and SuperNode authentication against a real flower-superlink started with a test CA's
// certificate (openssl) and --enable-supernode-auth (which Flower allows only with TLS): a node
// whose public key the operator registered with `flwr supernode register` (the OpenSSH form from
// publicKeyOpenSsh) joins over TLS and trains; an unregistered key is refused with one clear
// error; a node without the CA certificate gets a clear TLS error. No stack traces.

import { assert, assertEquals } from "../assert.ts";
import {
  exportPrivateKeyPem,
  generateNodeKeys,
  publicKeyOpenSsh,
} from "../../fed/flower/node_keys.ts";
import {
  assertFinal,
  flowerTest,
  makeTestCa,
  NodeProcess,
  SuperLink,
  trivialReference,
} from "./harness.ts";

async function keyFiles(dir: string, name: string): Promise<{ key: string; pub: string }> {
  const keys = await generateNodeKeys();
  const key = `${dir}/${name}.pem`;
  const pub = `${dir}/${name}.pub`;
  await Deno.writeTextFile(key, await exportPrivateKeyPem(keys));
  await Deno.writeTextFile(pub, await publicKeyOpenSsh(keys));
  return { key, pub };
}

flowerTest("flower: TLS with a test CA and SuperNode authentication", async () => {
  const tls = await makeTestCa();
  const link = await SuperLink.start({ tls, auth: true });
  const nodes: NodeProcess[] = [];
  try {
    const registered = await keyFiles(link.home, "registered");
    const stranger = await keyFiles(link.home, "stranger");
    await link.flwr("supernode", "register", registered.pub, "test");

    const refused = new NodeProcess([
      "--superlink",
      link.url,
      "--ca",
      tls.ca,
      "--key",
      stranger.key,
      "--activation-patience",
      "0",
    ]);
    nodes.push(refused);
    assertEquals((await refused.exit()).code, 1);
    assertEquals(
      refused.stderr.trim(),
      "error: the SuperLink refused this node: SuperNode authentication is on and its public " +
        "key is not registered. Register it (flwr supernode register <key.pub> <connection>; " +
        "the key in OpenSSH form comes from publicKeyOpenSsh), then retry",
    );

    const noCa = new NodeProcess(["--superlink", link.url, "--key", registered.key]);
    nodes.push(noCa);
    assertEquals((await noCa.exit()).code, 1);
    assert(
      noCa.stderr.startsWith(`error: TLS to the SuperLink at ${link.url} failed:`) &&
        !/^\s+at /m.test(noCa.stderr),
      noCa.stderr,
    );

    const member = new NodeProcess([
      "--superlink",
      link.url,
      "--ca",
      tls.ca,
      "--key",
      registered.key,
      "--value",
      "4",
    ]);
    nodes.push(member);
    await member.nodeId();
    const { runId, out } = await link.run({ rounds: 1, "min-nodes": 1 });
    assertEquals(await link.waitFinished(runId, 120), "finished:completed");
    await assertFinal(out, trivialReference([[{ client: 0, value: 4 }]]));
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await link.stop();
    await Deno.remove(tls.dir, { recursive: true });
  }
});
