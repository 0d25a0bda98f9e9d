// Every benchmark case, in report order. Each kernel's cases live in their own file.
import type { BenchCase } from "../case.ts";
import { cases as gelu } from "./gelu.ts";

export const allCases: BenchCase[] = [...gelu];
