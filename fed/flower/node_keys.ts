// A node's identity: an ECDSA P-384 key pair (the curve Flower's own SuperNode generates), with
// WebCrypto only. Every Fleet request is signed (flwr 1.42.0 checks signatures on every Fleet
// route, authentication on or off: flwr/superlink/routers/fleet/node_auth.py): the headers carry
// the public key as PEM SubjectPublicKeyInfo (base64), an ISO-8601 UTC timestamp, and an
// ECDSA-SHA256 signature of the timestamp's ASCII bytes in DER (base64).

export class NodeKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NodeKeyError";
  }
}

export interface NodeKeys {
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  /** PEM SubjectPublicKeyInfo bytes, exactly as Python's `cryptography` writes them. */
  publicPem: Uint8Array;
}

const ALGORITHM = { name: "ECDSA", namedCurve: "P-384" } as const;
const SIGN = { name: "ECDSA", hash: "SHA-256" } as const;
const COORD_BYTES = 48;

function b64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function pem(label: string, der: Uint8Array): string {
  const lines = b64(der).match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

async function withPem(privateKey: CryptoKey, publicKey: CryptoKey): Promise<NodeKeys> {
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", publicKey));
  return { privateKey, publicKey, publicPem: new TextEncoder().encode(pem("PUBLIC KEY", spki)) };
}

export async function generateNodeKeys(): Promise<NodeKeys> {
  const pair = await crypto.subtle.generateKey(ALGORITHM, true, ["sign", "verify"]);
  return await withPem(pair.privateKey, pair.publicKey);
}

/** The private key as PKCS#8 PEM: what a node keeps to come back as the same node. */
export async function exportPrivateKeyPem(keys: NodeKeys): Promise<string> {
  return pem(
    "PRIVATE KEY",
    new Uint8Array(await crypto.subtle.exportKey("pkcs8", keys.privateKey)),
  );
}

/** Reads a PKCS#8 PEM P-384 private key (exportPrivateKeyPem's output) and derives its public key. */
export async function importPrivateKeyPem(text: string, source: string): Promise<NodeKeys> {
  const body = /-----BEGIN PRIVATE KEY-----([\s\S]*?)-----END PRIVATE KEY-----/.exec(text)?.[1];
  if (!body) {
    throw new NodeKeyError(`${source}: not a PKCS#8 PEM private key ("BEGIN PRIVATE KEY")`);
  }
  try {
    const der = Uint8Array.from(atob(body.replace(/\s+/g, "")), (c) => c.charCodeAt(0));
    const privateKey = await crypto.subtle.importKey("pkcs8", der, ALGORITHM, true, ["sign"]);
    const { d: _, ...publicJwk } = await crypto.subtle.exportKey("jwk", privateKey);
    const publicKey = await crypto.subtle.importKey(
      "jwk",
      { ...publicJwk, key_ops: ["verify"] },
      ALGORITHM,
      true,
      ["verify"],
    );
    return await withPem(privateKey, publicKey);
  } catch (e) {
    throw new NodeKeyError(`${source}: not an ECDSA P-384 private key (${(e as Error).message})`);
  }
}

/**
 * The public key in OpenSSH form (`ecdsa-sha2-nistp384 AAAA...`): what the operator registers
 * with `flwr supernode register <file> <connection>` when SuperNode authentication is on.
 */
export async function publicKeyOpenSsh(keys: NodeKeys, comment = "comigs-node"): Promise<string> {
  const point = new Uint8Array(await crypto.subtle.exportKey("raw", keys.publicKey));
  const parts = [
    new TextEncoder().encode("ecdsa-sha2-nistp384"),
    new TextEncoder().encode("nistp384"),
    point,
  ];
  const blob = new Uint8Array(parts.reduce((n, p) => n + 4 + p.length, 0));
  let at = 0;
  for (const p of parts) {
    new DataView(blob.buffer).setUint32(at, p.length);
    blob.set(p, at + 4);
    at += 4 + p.length;
  }
  return `ecdsa-sha2-nistp384 ${b64(blob)} ${comment}\n`;
}

/** WebCrypto's r‖s signature → ASN.1 DER `SEQUENCE { INTEGER r, INTEGER s }`. */
function p1363ToDer(sig: Uint8Array): Uint8Array {
  const integer = (bytes: Uint8Array): number[] => {
    let i = 0;
    while (i < bytes.length - 1 && bytes[i] === 0) i++;
    const v = Array.from(bytes.subarray(i));
    if (v[0] & 0x80) v.unshift(0);
    return [0x02, v.length, ...v];
  };
  const body = [...integer(sig.subarray(0, COORD_BYTES)), ...integer(sig.subarray(COORD_BYTES))];
  return Uint8Array.from([0x30, body.length, ...body]);
}

/** Python's `datetime.now(timezone.utc).isoformat()`: microseconds and "+00:00". */
export function flowerTimestamp(date = new Date()): string {
  return date.toISOString().replace(/\.(\d{3})Z$/, ".$1000+00:00");
}

/** The three headers that authenticate one Fleet request. */
export async function signedHeaders(keys: NodeKeys): Promise<Record<string, string>> {
  const timestamp = flowerTimestamp();
  const sig = new Uint8Array(
    await crypto.subtle.sign(SIGN, keys.privateKey, new TextEncoder().encode(timestamp)),
  );
  return {
    "flwr-public-key": b64(keys.publicPem),
    "flwr-timestamp": timestamp,
    "flwr-signature": b64(p1363ToDer(sig)),
  };
}
