// The methods of method.md §4, all run by the same trainer: what each shares with the server and
// how its router learns. "No router" methods hold E experts behind a router whose weights are zero
// and never trained, with k = E: the top-k softmax of E equal logits is exactly the uniform mean
// of the experts, and the adapters file keeps interfaces.md's layout.
import { type AdapterConfig, initAdapters } from "../model/adapters.ts";
import { type BaseConfig, dimsOf } from "../model/base.ts";
import { OptionError } from "../model/option_error.ts";

export const METHODS = [
  "comigs-1g1s",
  "comigs-2g",
  "comigs-2s",
  "comigs-1gxs",
  "pfedmoe",
  "fedavg",
  "pcl",
  "local",
  "centralized",
  "pretrained",
] as const;
export type Method = typeof METHODS[number];

export interface MethodSpec {
  /** Sent to the server every round: attention LoRA + generalist, everything LoRA, or nothing. */
  shares: "generalist" | "all" | "none";
  /**
   * alternating: bi-level, router steps on validation (or train) batches every P expert steps;
   * joint: trained with the experts on the training loss; uniform: no router (mean of experts).
   */
  router: "alternating" | "joint" | "uniform";
  /** Whether E may differ per client (--experts); the others hold 2 experts everywhere. */
  heterogeneous: boolean;
  /** No training at all: the frozen base model is evaluated. */
  frozen?: boolean;
  /** One model trained on every client's pooled training data. */
  pooled?: boolean;
  /** Personalised aggregation (PCL): every client gets everyone's tensors and mixes them itself. */
  personal?: boolean;
  summary: string;
}

export const METHOD_SPECS: Record<Method, MethodSpec> = {
  "comigs-1g1s": {
    shares: "generalist",
    router: "alternating",
    heterogeneous: false,
    summary: "1 generalist (shared) + 1 specialist, router bi-level on validation batches",
  },
  "comigs-2g": {
    shares: "all",
    router: "alternating",
    heterogeneous: false,
    summary: "2 generalists (both shared), router bi-level",
  },
  "comigs-2s": {
    shares: "none",
    router: "alternating",
    heterogeneous: false,
    summary: "2 specialists, nothing shared after the initial sync, router bi-level",
  },
  "comigs-1gxs": {
    shares: "generalist",
    router: "alternating",
    heterogeneous: true,
    summary: "1 shared generalist + E_i − 1 specialists per client (--experts), router bi-level",
  },
  pfedmoe: {
    shares: "generalist",
    router: "joint",
    heterogeneous: false,
    summary: "generalist shared, router trained jointly with the experts on the training loss",
  },
  fedavg: {
    shares: "all",
    router: "uniform",
    heterogeneous: false,
    summary: "all LoRA averaged, output = mean of the 2 experts",
  },
  pcl: {
    shares: "all",
    router: "uniform",
    heterogeneous: false,
    personal: true,
    summary:
      "all LoRA sent; each client mixes everyone's, weighted by softmax(−its validation ppl)",
  },
  local: {
    shares: "none",
    router: "uniform",
    heterogeneous: false,
    summary: "no collaboration, output = mean of the 2 experts",
  },
  centralized: {
    shares: "none",
    router: "uniform",
    heterogeneous: false,
    pooled: true,
    summary: "one model (2 experts, mean) on the pooled training data",
  },
  pretrained: {
    shares: "none",
    router: "uniform",
    heterogeneous: false,
    frozen: true,
    summary: "the frozen base model, no adapters",
  },
};

/** The methods that are federations: not one pooled model, not the frozen base. */
export const FEDERATED_METHODS: readonly Method[] = METHODS.filter((m) =>
  !METHOD_SPECS[m].pooled && !METHOD_SPECS[m].frozen
);

/** Refuses a method that is not a federation (`deno task serve` serves only those). */
export function checkFederated(method: Method): void {
  if (!FEDERATED_METHODS.includes(method)) {
    throw new OptionError(
      "method",
      `${method} is not a federation; serve one of: ${FEDERATED_METHODS.join(", ")}`,
    );
  }
}

/** Whether a client sends `role`-tensors to the server under `spec`. */
export function isShared(
  spec: MethodSpec,
  role: "attention" | "generalist" | "specialist" | "router",
): boolean {
  if (role === "router" || spec.shares === "none") return false;
  return spec.shares === "all" || role !== "specialist";
}

/** The LoRA and routing settings of a run; the method decides how they apply. */
export type LoraSettings = Omit<AdapterConfig, "experts">;

/**
 * A client's adapter configuration under `spec`, with E experts in every block. Methods without
 * a router use k = E (the uniform mean, see above) and no load-balancing term.
 */
export function methodAdapterConfig(
  spec: MethodSpec,
  lora: LoraSettings,
  experts: number,
  base: BaseConfig,
): AdapterConfig {
  const uniform = spec.router === "uniform";
  return {
    ...lora,
    topK: uniform ? experts : lora.topK,
    lbCoef: uniform ? 0 : lora.lbCoef,
    experts: new Array(dimsOf(base).layers).fill(experts),
  };
}

/** Fresh adapters for a client under `spec` (methods without a router get a zero router). */
export function methodInitAdapters(
  spec: MethodSpec,
  base: BaseConfig,
  config: AdapterConfig,
  seed: number,
): Map<string, Float32Array> {
  const init = initAdapters(base, config, seed);
  if (spec.router === "uniform") {
    for (const [name, values] of init) if (name.endsWith("router.weight")) values.fill(0);
  }
  return init;
}
