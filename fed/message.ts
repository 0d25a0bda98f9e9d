// The only thing that crosses between a client and the server: a message of named f32 tensors
// (canonical adapter names) with its round and sender, serialised as safetensors bytes. Clients
// build their outgoing message from the tensors their method shares; the server sees bytes,
// never a client object, so specialists, routers and data cannot reach it by accident.
import {
  CheckpointError,
  type NamedTensor,
  parseSafetensors,
  serializeSafetensors,
} from "../model/safetensors.ts";

export interface Message {
  round: number;
  /** A client id, or "server" for the averaged tensors sent back. */
  sender: number | "server";
  /** Training tokens behind the tensors (weights the weighted mean; 0 from the server). */
  trainTokens: number;
  tensors: Map<string, NamedTensor>;
}

export function encodeMessage(message: Message): Uint8Array {
  return serializeSafetensors(message.tensors, {
    round: String(message.round),
    sender: String(message.sender),
    train_tokens: String(message.trainTokens),
  });
}

export function decodeMessage(bytes: Uint8Array, source = "message"): Message {
  const { tensors, metadata } = parseSafetensors(bytes, source);
  const integer = (key: string): number => {
    const value = Number(metadata[key]);
    if (!Number.isInteger(value) || value < 0) {
      throw new CheckpointError(source, `metadata "${key}" = "${metadata[key]}" is not a count`);
    }
    return value;
  };
  const sender = metadata.sender === "server" ? "server" : integer("sender");
  return { round: integer("round"), sender, trainTokens: integer("train_tokens"), tensors };
}
