// The Fleet API messages a node sends and receives (flwr 1.42.0: flwr/proto/fleet_pb2,
// message_pb2, heartbeat_pb2, node_pb2, error_pb2; field numbers listed in flower/PROTOCOL.md),
// encoded with proto_wire.ts. Only the fields a node uses are read; the rest are skipped.

import { ProtoReader, ProtoWriter } from "./proto_wire.ts";

/** `flwr.proto.Metadata`. Node ids and run ids are uint64: bigint here. */
export interface Metadata {
  runId: bigint;
  messageId: string;
  srcNodeId: bigint;
  dstNodeId: bigint;
  replyToMessageId: string;
  groupId: string;
  ttl: number;
  messageType: string;
  createdAt: number;
  srcTaskId?: bigint;
  dstTaskId?: bigint;
}

/** `flwr.proto.Error`: the error a reply carries instead of content. */
export interface MessageError {
  code: bigint;
  reason: string;
}

/** `flwr.proto.ObjectTree`: a message's object ids, each with its children's trees. */
export interface ObjectTree {
  objectId: string;
  children: ObjectTree[];
}

export function encodeMetadata(m: Metadata): Uint8Array {
  const w = new ProtoWriter()
    .uint64(1, m.runId)
    .string(2, m.messageId)
    .uint64(3, m.srcNodeId)
    .uint64(4, m.dstNodeId)
    .string(5, m.replyToMessageId)
    .string(6, m.groupId)
    .double(7, m.ttl)
    .string(8, m.messageType)
    .double(9, m.createdAt);
  if (m.srcTaskId !== undefined) w.uint64(10, m.srcTaskId, true);
  if (m.dstTaskId !== undefined) w.uint64(11, m.dstTaskId, true);
  return w.finish();
}

export function decodeMetadata(buf: Uint8Array): Metadata {
  const r = new ProtoReader(buf, "Metadata");
  return {
    runId: r.uint64(1),
    messageId: r.string(2),
    srcNodeId: r.uint64(3),
    dstNodeId: r.uint64(4),
    replyToMessageId: r.string(5),
    groupId: r.string(6),
    ttl: r.double(7),
    messageType: r.string(8),
    createdAt: r.double(9),
    srcTaskId: r.has(10) ? r.uint64(10) : undefined,
    dstTaskId: r.has(11) ? r.uint64(11) : undefined,
  };
}

export function encodeError(e: MessageError): Uint8Array {
  return new ProtoWriter().sint64(1, e.code).string(2, e.reason).finish();
}

/**
 * `flwr.proto.Message`. Since flwr 1.20 the content travels as objects (objects.ts), so the
 * proto carries the metadata, and either an empty content RecordDict (`hasContent`: "content is
 * in the object tree") or an error.
 */
export interface MessageProto {
  metadata: Metadata;
  hasContent: boolean;
  error?: MessageError;
}

export function encodeMessage(m: MessageProto): Uint8Array {
  const w = new ProtoWriter().message(1, encodeMetadata(m.metadata));
  if (m.hasContent) w.message(2, new Uint8Array(0));
  if (m.error) w.message(3, encodeError(m.error));
  return w.finish();
}

export function decodeMessage(buf: Uint8Array): MessageProto {
  const r = new ProtoReader(buf, "Message");
  const error = r.has(3) ? new ProtoReader(r.bytes(3), "Error") : undefined;
  return {
    metadata: decodeMetadata(r.bytes(1)),
    hasContent: r.has(2),
    error: error && { code: error.sint64(1), reason: error.string(2) },
  };
}

export function encodeObjectTree(t: ObjectTree): Uint8Array {
  const w = new ProtoWriter().string(1, t.objectId);
  for (const c of t.children) w.message(2, encodeObjectTree(c));
  return w.finish();
}

export function decodeObjectTree(buf: Uint8Array): ObjectTree {
  const r = new ProtoReader(buf, "ObjectTree");
  return { objectId: r.string(1), children: r.repeated(2).map(decodeObjectTree) };
}

const node = (nodeId: bigint) => new ProtoWriter().uint64(1, nodeId).finish();

/** The request bodies, one per route, by the route's name (`POST /v1/fleet/<route>`). */
export const requests = {
  registerNode: (publicKey: Uint8Array) => new ProtoWriter().bytes(1, publicKey).finish(),
  activateNode: (publicKey: Uint8Array, heartbeatInterval: number) =>
    new ProtoWriter().bytes(1, publicKey).double(2, heartbeatInterval).finish(),
  deactivateNode: (nodeId: bigint) => new ProtoWriter().uint64(1, nodeId).finish(),
  unregisterNode: (nodeId: bigint) => new ProtoWriter().uint64(1, nodeId).finish(),
  sendNodeHeartbeat: (nodeId: bigint, heartbeatInterval: number) =>
    new ProtoWriter().message(1, node(nodeId)).double(2, heartbeatInterval).finish(),
  pullMessages: (nodeId: bigint) => new ProtoWriter().message(1, node(nodeId)).finish(),
  pushMessages: (nodeId: bigint, message: MessageProto, tree: ObjectTree, runtime: number) =>
    new ProtoWriter()
      .message(1, node(nodeId))
      .message(2, encodeMessage(message))
      .message(3, encodeObjectTree(tree))
      .packedDoubles(4, [runtime])
      .finish(),
  pushObject: (
    nodeId: bigint,
    runId: bigint,
    objectId: string,
    content: Uint8Array,
    sessionId: string,
  ) =>
    new ProtoWriter()
      .message(1, node(nodeId))
      .uint64(2, runId)
      .string(3, objectId)
      .bytes(4, content)
      .string(5, sessionId)
      .finish(),
  pullObject: (nodeId: bigint, runId: bigint, objectId: string) =>
    new ProtoWriter().message(1, node(nodeId)).uint64(2, runId).string(3, objectId).finish(),
  getRun: (nodeId: bigint, runId: bigint) =>
    new ProtoWriter().message(1, node(nodeId)).uint64(2, runId).finish(),
  confirmMessageReceived: (nodeId: bigint, runId: bigint, messageObjectId: string) =>
    new ProtoWriter().message(1, node(nodeId)).uint64(2, runId).string(3, messageObjectId)
      .finish(),
};

/** `RegisterNodeFleetResponse` / `ActivateNodeResponse`: `{uint64 node_id = 1}`. */
export function decodeNodeId(buf: Uint8Array, what: string): bigint {
  return new ProtoReader(buf, what).uint64(1);
}

export function decodeHeartbeatResponse(buf: Uint8Array): boolean {
  return new ProtoReader(buf, "SendNodeHeartbeatResponse").bool(1);
}

export interface PulledMessage {
  message: MessageProto;
  tree: ObjectTree;
}

/** `PullMessagesResponse`: at most one message (the SuperLink's limit) with its object tree. */
export function decodePullMessages(buf: Uint8Array): PulledMessage[] {
  const r = new ProtoReader(buf, "PullMessagesResponse");
  const messages = r.repeated(2).map(decodeMessage);
  const trees = r.repeated(3).map(decodeObjectTree);
  return messages.map((message, i) => ({ message, tree: trees[i] }));
}

/** `PushMessagesResponse`: which objects the SuperLink still needs, and the push session. */
export function decodePushMessages(buf: Uint8Array): { toPush: string[]; sessionId: string } {
  const r = new ProtoReader(buf, "PushMessagesResponse");
  return { toPush: r.repeatedStrings(3), sessionId: r.string(4) };
}

export function decodePullObject(
  buf: Uint8Array,
): { found: boolean; available: boolean; content: Uint8Array } {
  const r = new ProtoReader(buf, "PullObjectResponse");
  return { found: r.bool(1), available: r.bool(2), content: r.bytes(3) };
}

export function decodePushObject(buf: Uint8Array): boolean {
  return new ProtoReader(buf, "PushObjectResponse").bool(1);
}
