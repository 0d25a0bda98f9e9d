// Every benchmark case, in report order. Each kernel's cases live in their own file.
import type { BenchCase } from "../case.ts";
import { cases as adamw } from "./adamw.ts";
import { cases as copy } from "./copy.ts";
import { cases as gelu } from "./gelu.ts";

export const allCases: BenchCase[] = [...copy, ...gelu, ...adamw];
