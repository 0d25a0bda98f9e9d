// A run's choice of the attention projections with LoRA (`loraTargets`, `--lora-targets`) without
// a GPU: each projection written short or long, in any order, resolves to one canonical list; an
// empty list, an unknown name or a repeat is one error naming the option; a GPT-2 base refuses
// it; an older run's options (without it) adapt every projection; and the server of a q,v run
// holds only q and v LoRA and refuses an update with any other set of projections.
import { clientAdapterConfig, makeStrategy } from "../../fed/factories.ts";
import { encodeMessage } from "../../fed/message.ts";
import { METHODS } from "../../fed/methods.ts";
import {
  checkAgainstBase,
  resolveTrainOptions,
  type TrainOptions,
  withCurrentDefaults,
} from "../../fed/options.ts";
import { adapterShapes } from "../../model/adapters.ts";
import { readConfig } from "../../model/checkpoint.ts";
import { OptionError } from "../../model/option_error.ts";
import type { NamedTensor } from "../../model/safetensors.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { tinyLlamaConfig } from "../model/tiny_llama.ts";
import { MODEL } from "./tiny_run.ts";

const LLAMA = tinyLlamaConfig();

/** A small Llama run's options adapting `loraTargets`. */
function run(loraTargets?: string[] | null): TrainOptions {
  return resolveTrainOptions({ clients: 2, seq: 16, model: "tiny-llama", out: "run", loraTargets });
}

Deno.test("loraTargets: short or long names, any order, one canonical list", () => {
  assertEquals(run().loraTargets, null);
  assertEquals(run(null).loraTargets, null);
  assertEquals(run(["v", "q"]).loraTargets, ["q_proj", "v_proj"]);
  assertEquals(run(["o_proj", "k", "q"]).loraTargets, ["q_proj", "k_proj", "o_proj"]);
  assertEquals(run(["q", "k", "v", "o"]).loraTargets, ["q_proj", "k_proj", "v_proj", "o_proj"]);
});

Deno.test("loraTargets: empty, unknown or repeated is one error naming the option", () => {
  const refused = (given: string[], message: string) =>
    assertThrows(() => run(given), OptionError, `loraTargets ${message}`);
  refused([], "names no projection: give a non-empty subset of q, k, v, o");
  refused(["q", "gate"], '"gate" is not an attention projection: give a non-empty subset of');
  refused(["q", ""], '"" is not an attention projection');
  refused(["c_attn"], '"c_attn" is not an attention projection');
  refused(["q", "v", "q_proj"], "names q_proj twice");
});

Deno.test("loraTargets: a GPT-2 base refuses it, a Llama base takes it", async () => {
  const gpt2 = await readConfig(MODEL);
  assertThrows(
    () => checkAgainstBase(run(["q", "v"]), gpt2),
    OptionError,
    "loraTargets chooses among the attention projections of a Llama-family base (q, k, v, o); " +
      "the base model (model tiny-llama) is GPT-2, whose attention LoRA is always on c_attn and " +
      "c_proj: leave loraTargets out",
  );
  checkAgainstBase(run(), gpt2);
  checkAgainstBase(run(["q", "v"]), LLAMA);
});

Deno.test("loraTargets: an older run's options (without it) adapt every projection", () => {
  const { loraTargets: _, ...older } = run(["q"]);
  const options = withCurrentDefaults(older as TrainOptions);
  assertEquals(options.loraTargets, null);
  const names = [...adapterShapes(LLAMA, clientAdapterConfig(options, LLAMA, 0)).keys()];
  for (const p of ["q", "k", "v", "o"]) {
    assert(names.includes(`model.layers.1.self_attn.${p}_proj.lora_A`), `${p}_proj missing`);
  }
});

Deno.test("loraTargets: every method's every client adapts the projections chosen", () => {
  for (const method of METHODS) {
    const options = resolveTrainOptions({
      method,
      clients: 3,
      seq: 16,
      model: "tiny-llama",
      out: "run",
      loraTargets: ["k", "o"],
    });
    for (const id of [0, 1, 2]) {
      const names = [...adapterShapes(LLAMA, clientAdapterConfig(options, LLAMA, id)).keys()];
      assertEquals(
        names.filter((n) => n.includes(".self_attn.")).map((n) => n.split(".")[4]),
        ["k_proj", "k_proj", "o_proj", "o_proj", "k_proj", "k_proj", "o_proj", "o_proj"],
        `${method} client ${id}`,
      );
    }
  }
});

Deno.test("loraTargets: the server of a q,v run holds q and v only and refuses other sets", () => {
  const options = run(["q", "v"]);
  const strategy = makeStrategy(options, LLAMA);
  const global = strategy.initializeParameters()!;
  const attention = [...global.keys()].filter((n) => n.includes(".self_attn."));
  assertEquals(attention, [
    "model.layers.0.self_attn.q_proj.lora_A",
    "model.layers.0.self_attn.q_proj.lora_B",
    "model.layers.0.self_attn.v_proj.lora_A",
    "model.layers.0.self_attn.v_proj.lora_B",
    "model.layers.1.self_attn.q_proj.lora_A",
    "model.layers.1.self_attn.q_proj.lora_B",
    "model.layers.1.self_attn.v_proj.lora_A",
    "model.layers.1.self_attn.v_proj.lora_B",
  ]);
  // Client 1 sends the global as it got it, plus (or minus) one projection.
  const allFour = adapterShapes(LLAMA, clientAdapterConfig(run(), LLAMA, 0));
  const kName = "model.layers.0.self_attn.k_proj.lora_A";
  const withK = new Map<string, NamedTensor>(global);
  const [rows, cols] = allFour.get(kName)!;
  withK.set(kName, { shape: [rows, cols], data: new Float32Array(rows * cols) });
  const withoutV = new Map(global);
  withoutV.delete("model.layers.1.self_attn.v_proj.lora_B");
  const fit = (tensors: Map<string, NamedTensor>) => ({
    client: 1,
    bytes: encodeMessage({ round: 1, sender: 1, trainTokens: 100, tensors }),
  });
  const outcome = strategy.aggregateFit(1, [fit(withK), fit(withoutV), fit(global)]);
  assertEquals(outcome.refusals.length, 2, JSON.stringify(outcome.refusals));
  assert(outcome.refusals[0].problem.includes(kName), outcome.refusals[0].problem);
  assert(
    outcome.refusals[1].problem.includes("model.layers.1.self_attn.v_proj.lora_B"),
    outcome.refusals[1].problem,
  );
});
