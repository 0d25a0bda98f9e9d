// `deno task pretrain`: flag validation, the learning-rate schedule, and a tiny run end to end
// (a small corpus subset, 2 layers of width 32, vocab 300, 2×16 tokens, 6 steps): the held-out
// loss falls, the folder loads as a base model with its tokenizer, and stopping halfway then
// resuming gives bit-identical weights and the same log as the uninterrupted run.
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { UsageError } from "../../cli/args.ts";
import { commandLine, parseInvocation } from "../../cli/pretrain.ts";
import { readPretrainCorpora, splitDocuments } from "../../fed/corpora.ts";
import { loadBaseCheckpoint } from "../../model/checkpoint.ts";
import { dimsOf, familyOf, parameterCount } from "../../model/base.ts";
import {
  learningRate,
  modelConfig,
  pretrain,
  PRETRAIN_DEFAULTS as DEFAULTS,
  type PretrainOptions,
} from "../../model/pretrain.ts";
import { loadModelTokenizer } from "../../model/tokenizer.ts";
import { gpuTest } from "../util.ts";

Deno.test("flags: defaults, bad values and --resume with other flags are usage errors", () => {
  assertEquals(parseInvocation([]), { options: DEFAULTS });
  const { options } = parseInvocation(["--steps", "10", "--lr", "3e-4", "--warmup", "2"]) as {
    options: PretrainOptions;
  };
  assertEquals([options.steps, options.lr, options.warmup], [10, 3e-4, 2]);
  assertEquals(parseInvocation(["--resume", "x"]), { resume: "x" });
  assertThrows(() => parseInvocation(["--steps", "0"]), UsageError, "--steps must be an integer");
  assertThrows(() => parseInvocation(["--batch", "2.5"]), UsageError, "--batch");
  assertThrows(() => parseInvocation(["--lr", "0"]), UsageError, "--lr must be a number > 0");
  assertThrows(() => parseInvocation(["--vocab", "100"]), UsageError, "258..65536");
  assertThrows(() => parseInvocation(["--embd", "30", "--heads", "4"]), UsageError, "divisible");
  assertThrows(() => parseInvocation(["--steps", "5", "--warmup", "9"]), UsageError, "exceeds");
  assertThrows(() => parseInvocation(["--resume", "x", "--seq", "64"]), UsageError, "--seq");
  assertThrows(() => parseInvocation(["--bogus"]), UsageError);
});

Deno.test("the default model has 1–2M parameters", () => {
  const n = parameterCount(modelConfig(DEFAULTS));
  assert(n > 1e6 && n < 2e6, `${n} parameters`);
});

Deno.test("learning rate: linear warm-up to the peak, cosine down to 10% at the last step", () => {
  const options = { ...DEFAULTS, lr: 1, warmup: 4, steps: 14 };
  assertEquals([0, 1, 2, 3].map((s) => learningRate(options, s)), [0.25, 0.5, 0.75, 1]);
  assertEquals(learningRate(options, 4), 1);
  assert(Math.abs(learningRate(options, 13) - 0.1) < 1e-12);
  for (let s = 4; s < 13; s++) assert(learningRate(options, s + 1) < learningRate(options, s));
});

/** A small slice of the corpora, cut short, with a few held-out documents. */
async function tinyTexts() {
  const { train, heldOut } = splitDocuments(await readPretrainCorpora());
  const ham = (d: { id: string }) => d.id.startsWith("ham/");
  const cut = (d: { text: string }) => d.text.slice(0, 800);
  return {
    train: [...train.slice(0, 10), ...train.filter(ham).slice(0, 30)].map(cut),
    heldOut: heldOut.filter(ham).slice(0, 3).map(cut),
  };
}

const TINY_GPT2: Omit<PretrainOptions, "out"> = {
  steps: 6,
  batch: 2,
  seq: 16,
  lr: 1e-2,
  warmup: 1,
  evalEvery: 3,
  saveEvery: 100,
  seed: 7,
  vocab: 300,
  layers: 2,
  heads: 2,
  embd: 32,
  arch: "gpt2",
  kvHeads: 1,
  intermediate: 64,
};

for (const arch of ["gpt2", "llama"] as const) {
  gpuTest(
    `${arch}: a tiny pretraining run learns, loads back and resumes bit for bit`,
    async (engine) => {
      const TINY = { ...TINY_GPT2, arch };
      const texts = await tinyTexts();
      const straight = await Deno.makeTempDir({ prefix: "pretrain-straight-" });
      const halves = await Deno.makeTempDir({ prefix: "pretrain-halves-" });
      try {
        const log = await pretrain(engine, { options: { ...TINY, out: straight } }, texts, {
          commandLine,
        });
        assertEquals(log.map((r) => r.step), [0, 3, 6]);
        assert(
          log[2].val_loss < log[0].val_loss - 0.3,
          `held-out loss ${log.map((r) => r.val_loss)}`,
        );
        assert(log[0].val_loss < Math.log(300) + 0.5, "initial loss far above ln(vocab)");

        const { config, weights } = await loadBaseCheckpoint(straight);
        assertEquals([familyOf(config), dimsOf(config).vocab], [arch, 300]);
        const tokenizer = await loadModelTokenizer(straight, config);
        assertEquals(tokenizer.decode(tokenizer.encode("The Congress")), "The Congress");
        const logLines = (await Deno.readTextFile(`${straight}/log.jsonl`)).trim().split("\n");
        assertEquals(Object.keys(JSON.parse(logLines[0])), [
          "step",
          "tokens",
          "train_loss",
          "val_loss",
          "val_ppl",
          "lr",
          "wall_s",
        ]);
        const command = await Deno.readTextFile(`${straight}/train_command.txt`);
        assert(command.startsWith("deno task pretrain --out ") && command.includes("--steps 6"));

        await pretrain(engine, { options: { ...TINY, out: halves } }, texts, { stopAfter: 4 });
        const resumedLog = await pretrain(engine, { resume: halves }, texts);
        const resumed = await loadBaseCheckpoint(halves);
        for (const [name, data] of weights) {
          const got = new Uint32Array(resumed.weights.get(name)!.buffer);
          assertEquals(got, new Uint32Array(data.buffer), `${name} differs after resuming`);
        }
        const withoutTime = (r: { wall_s: number }) => ({ ...r, wall_s: 0 });
        assertEquals(resumedLog.map(withoutTime), log.map(withoutTime));
      } finally {
        await Deno.remove(straight, { recursive: true });
        await Deno.remove(halves, { recursive: true });
      }
    },
  );
}
