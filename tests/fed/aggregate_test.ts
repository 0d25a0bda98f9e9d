// The server's averaging and the message format: uniform and token-weighted means computed in
// float64 in client order, clients that disagree on what they share are refused, and messages
// survive encoding exactly.
import { aggregate } from "../../fed/aggregate.ts";
import { decodeMessage, encodeMessage, type Message } from "../../fed/message.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";

function message(sender: number, trainTokens: number, values: Record<string, number[]>): Message {
  return {
    round: 3,
    sender,
    trainTokens,
    tensors: new Map(
      Object.entries(values).map(([name, data]) => [name, {
        shape: [data.length],
        data: Float32Array.from(data),
      }]),
    ),
  };
}

Deno.test("aggregate: uniform mean ignores sizes, token weighting uses them", () => {
  const messages = [
    message(0, 100, { a: [1, 2], b: [0] }),
    message(1, 300, { a: [3, 6], b: [4] }),
  ];
  const uniform = aggregate(messages, "uniform");
  assertEquals([...uniform.get("a")!.data], [2, 4]);
  assertEquals([...uniform.get("b")!.data], [2]);
  const weighted = aggregate(messages, "tokens");
  assertEquals([...weighted.get("a")!.data], [2.5, 5]);
  assertEquals([...weighted.get("b")!.data], [3]);
});

Deno.test("aggregate: the mean of three is rounded once, from float64, in client order", () => {
  const thirds = [0.1, 0.2, 0.7].map((x, i) => message(i, 1, { a: [x] }));
  const expected = Math.fround((Math.fround(0.1) + Math.fround(0.2) + Math.fround(0.7)) / 3);
  assertEquals(aggregate(thirds, "uniform").get("a")!.data[0], expected);
});

Deno.test("aggregate: clients sharing different tensors or shapes are refused", () => {
  assertThrows(
    () => aggregate([message(0, 1, { a: [1] }), message(1, 1, { b: [1] })], "uniform"),
    Error,
    "clients must share the same tensors",
  );
  assertThrows(
    () => aggregate([message(0, 1, { a: [1] }), message(1, 1, { a: [1, 2] })], "uniform"),
    Error,
    "is [2] from client 1",
  );
  assertThrows(() => aggregate([], "uniform"), Error, "no client messages");
  assertThrows(() => aggregate([message(0, 0, { a: [1] })], "tokens"), Error, "token weighting");
});

Deno.test("messages: encoding round-trips exactly; bad bytes are refused", () => {
  const m = message(2, 12345, { "h.0.attn.c_attn.lora_A": [1.5, -2.25, 1e-30] });
  const back = decodeMessage(encodeMessage(m));
  assertEquals(back.round, 3);
  assertEquals(back.sender, 2);
  assertEquals(back.trainTokens, 12345);
  assertEquals([...back.tensors.keys()], ["h.0.attn.c_attn.lora_A"]);
  assertEquals([...back.tensors.get("h.0.attn.c_attn.lora_A")!.data], [
    1.5,
    -2.25,
    Math.fround(1e-30),
  ]);
  const server = decodeMessage(encodeMessage({ ...m, sender: "server", trainTokens: 0 }));
  assertEquals(server.sender, "server");
  assertThrows(() => decodeMessage(new Uint8Array(5)), Error, "too short");
  const bytes = encodeMessage(m);
  assert(bytes.length > 8);
});
