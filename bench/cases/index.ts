// Every benchmark case, in report order. Each kernel's cases live in their own file.
import type { BenchCase } from "../case.ts";
import { cases as adamw } from "./adamw.ts";
import { cases as add } from "./add.ts";
import { cases as attention } from "./attention.ts";
import { cases as copy } from "./copy.ts";
import { cases as crossEntropy } from "./cross_entropy.ts";
import { cases as embedding } from "./embedding.ts";
import { cases as gelu } from "./gelu.ts";
import { cases as groupedAttention } from "./grouped_attention.ts";
import { cases as layernorm } from "./layernorm.ts";
import { cases as loadBalance } from "./load_balance.ts";
import { cases as lora } from "./lora.ts";
import { cases as matmul } from "./matmul.ts";
import { cases as moeMlp } from "./moe_mlp.ts";
import { cases as moeSwiglu } from "./moe_swiglu.ts";
import { cases as rmsnorm } from "./rmsnorm.ts";
import { cases as rope } from "./rope.ts";
import { cases as softmax } from "./softmax.ts";
import { cases as sum } from "./sum.ts";
import { cases as swiglu } from "./swiglu.ts";
import { cases as topkGate } from "./topk_gate.ts";

export const allCases: BenchCase[] = [
  ...matmul,
  ...attention,
  ...groupedAttention,
  ...copy,
  ...gelu,
  ...layernorm,
  ...rmsnorm,
  ...rope,
  ...swiglu,
  ...add,
  ...softmax,
  ...crossEntropy,
  ...embedding,
  ...sum,
  ...adamw,
  ...lora,
  ...topkGate,
  ...moeMlp,
  ...moeSwiglu,
  ...loadBalance,
];
