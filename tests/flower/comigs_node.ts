// `deno task flower-node` (cli/flower_node.ts) for the tests: the same program, flags and output,
// with the tiny run's documents (tiny_comigs.ts) through the library's corpora hook instead of a
// scenario's.
//
//   deno run -A tests/flower/comigs_node.ts --superlink URL --client ID --out DIR [flags]
import { runMain } from "../../cli/args.ts";
import { FLOWER_NODE_FLAGS, flowerNodeMain } from "../../cli/flower_node.ts";
import { corpora } from "./tiny_comigs.ts";

await runMain(() => flowerNodeMain(Deno.args, { corpora: corpora() }), FLOWER_NODE_FLAGS);
