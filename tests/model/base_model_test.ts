// The shipped base model (models/base, made by `deno task pretrain`; see its train_command.txt)
// must load as a Hugging Face GPT-2 folder with its own tokenizer, and its training log must
// show the held-out perplexity falling, so `deno task train` can start from it after a clone.
import { assert, assertEquals } from "../assert.ts";
import { loadGpt2Checkpoint as loadBaseCheckpoint } from "../../model/gpt2_checkpoint.ts";
import { parameterCount } from "../../model/base.ts";
import { loadTokenizer } from "../../model/tokenizer.ts";

const BASE = new URL("../../models/base", import.meta.url).pathname;

Deno.test("the shipped base model loads with its tokenizer and a falling perplexity log", async () => {
  const { config } = await loadBaseCheckpoint(BASE);
  const params = parameterCount(config);
  assert(params >= 1e6 && params <= 2e6, `${params} parameters, expected 1–2M`);
  assertEquals(config.n_positions, 128);
  const tokenizer = await loadTokenizer(BASE, config.vocab_size);
  const text = "The Congress shall meet at least once in every year.";
  assertEquals(tokenizer.decode(tokenizer.encode(text)), text);
  const log = (await Deno.readTextFile(`${BASE}/log.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  const first = log[0].val_ppl, last = log[log.length - 1].val_ppl;
  assert(last < first / 10, `held-out perplexity ${first} → ${last} did not fall tenfold`);
  assert((await Deno.readTextFile(`${BASE}/train_command.txt`)).startsWith("deno task pretrain"));
});
