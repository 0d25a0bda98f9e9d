#!/usr/bin/env bash
# Every table and plot in results/, continuing what is done: each experiment's runs live under
# runs/results/ (finished runs are skipped, interrupted ones resumed: rerun the same command after
# a stop), and its report is copied into results/<name>/.
#
#   bash scripts/results.sh [main|llama|ablations|hetero|dp|all]    (default all; SEEDS=3, JOBS=2)
#
# The whole set takes days here, more than one sitting, and runs/ does not travel with the
# repository; so the records of every finished run (config.json, summary.json, metrics.jsonl:
# all a report reads) are kept in results/<name>/runs/ and committed, and are put back into
# runs/results/ before training, where they count as finished. FRESH=1 puts nothing back:
# everything is trained again from scratch (the same seeds give the same records, wall times
# aside).
#
# JOBS runs of a comparison train at once (deno task compare --jobs): 2 is the fastest measured
# on this 2-core machine.
#
# The options are the ones the reports in results/ state in their "settings" line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
deno=node_modules/deno/deno
seeds=${SEEDS:-3}
jobs=${JOBS:-2}
fresh=${FRESH:-0}
part=${1:-all}

# The records of a finished run, all a report reads.
RECORDS=(config.json summary.json metrics.jsonl)

# restore NAME: kept records of NAME's finished runs (results/NAME/runs/) back into runs/results/.
restore() {
  local kept=results/$1/runs runs=runs/results/$1 name
  [ "$fresh" = 1 ] || [ ! -d "$kept" ] && return 0
  mkdir -p "$runs"
  [ -f "$runs/compare.json" ] || cp "$kept/compare.json" "$runs/"
  for name in $(cd "$kept" && ls -d -- */); do
    [ -f "$runs/$name/summary.json" ] && continue
    rm -rf "${runs:?}/$name"
    cp -r "$kept/$name" "$runs/$name"
  done
}

# keep: the records of every finished run under runs/results/ into results/ (also when a stop
# ends the script: trap below), so that committing results/ keeps them.
keep() {
  local summary run kept
  for summary in runs/results/*/*/summary.json; do
    [ -f "$summary" ] || continue
    run=$(dirname "$summary")
    kept=results/$(basename "$(dirname "$run")")/runs
    [ -f "$run/../compare.json" ] || continue # hetero and dp keep theirs in train()
    mkdir -p "$kept/$(basename "$run")"
    cp "$run/../compare.json" "$kept/"
    cp "${RECORDS[@]/#/$run/}" "$kept/$(basename "$run")/"
  done
}
trap keep EXIT

# compare NAME FLAGS...: deno task compare over seeds 0..SEEDS-1, report into results/NAME.
compare() {
  local name=$1
  shift
  restore "$name"
  "$deno" task compare --seeds "$seeds" --jobs "$jobs" --out "runs/results/$name" "$@"
  mkdir -p "results/$name"
  cp "runs/results/$name/results.md" "runs/results/$name/ppl.svg" "results/$name/"
}

# train NAME/RUN FLAGS...: one run in runs/results/NAME/RUN, skipped when finished or kept
# (results/NAME/RUN/summary.json, unless FRESH=1), resumed when interrupted; its config.json and
# summary.json are kept in results/NAME/RUN/.
train() {
  local dir=runs/results/$1 kept=results/$1
  shift
  if [ "$fresh" != 1 ] && [ -f "$kept/summary.json" ]; then return; fi
  if [ -f "$dir/config.json" ] && [ ! -f "$dir/summary.json" ]; then
    "$deno" task train --resume "$dir"
  elif [ ! -f "$dir/config.json" ]; then
    "$deno" task train --out "$dir" "$@"
  fi
  mkdir -p "$kept"
  cp "$dir"/{config,summary}.json "$kept/"
}

# Test perplexity is evaluated before training, after round 5 and after the last (10): the
# final numbers are those of evaluating every round (tests/fed/run_test.ts) in about two thirds
# of the time (here, two runs at once, an evaluation takes as long as a round of training).
main() {
  local every=(--eval-every 5)
  compare topics --scenario topics "${every[@]}"
  compare topics-ood --scenario topics --ood "${every[@]}"
  compare iid --scenario iid "${every[@]}"
  compare iid-ood --scenario iid --ood "${every[@]}"
  compare languages --scenario languages "${every[@]}"
  compare languages-ood --scenario languages --ood "${every[@]}"
  compare domains --scenario domains "${every[@]}"
  compare domains-ood --scenario domains --ood "${every[@]}"
  compare lowdata-topics --scenario topics --train-tokens 8000,all,all,all "${every[@]}"
}

# The same comparison on the shipped Llama-family base (models/base-llama), topics in and out.
llama() {
  local every=(--eval-every 5)
  compare llama-topics --scenario topics --model models/base-llama "${every[@]}"
  compare llama-topics-ood --scenario topics --ood --model models/base-llama "${every[@]}"
}

# CoMiGS-1G1S on the scenarios where it trails 2G or 2S, one setting changed at a time.
ablations() {
  local scenario ood suffix
  for scenario in languages domains; do
    for ood in "" "--ood"; do
      suffix=${ood:+-ood}
      # Only the final numbers are compared: evaluated before training and at the end.
      set -- --scenario "$scenario" $ood --methods comigs-1g1s --eval-every 10
      compare "ablation-$scenario$suffix-lb0" "$@" --lb-coef 0
      compare "ablation-$scenario$suffix-rho0.25" "$@" --lb-rho 0.25
      compare "ablation-$scenario$suffix-rho0.75" "$@" --lb-rho 0.75
      compare "ablation-$scenario$suffix-router-on-train" "$@" --router-on-train
      compare "ablation-$scenario$suffix-top1" "$@" --top-k 1
      compare "ablation-$scenario$suffix-router5x5" "$@" --router-every 5 --router-steps 5
    done
  done
}

# Heterogeneous resources: client 0 with one expert, the others with 1, 2 or 4; and two low-data
# clients holding only the generalist while the two others hold 1 or 8 experts each (top-2 of
# 8, sparse dispatch): do the generalist-only clients gain from the others' specialists?
hetero() {
  local run seed
  for run in e1-1-1-1 e1-2-2-2 e1-4-4-4 lowdata-e1-1-1-1 lowdata-e1-1-8-8; do
    local experts=${run#lowdata-e} low=()
    experts=${experts#e}
    [ "$run" != "${run#lowdata-}" ] && low=(--train-tokens 8000,8000,all,all)
    for seed in $(seq 0 $((seeds - 1))); do
      train "hetero-topics/$run-s$seed" --method comigs-1gxs \
        --experts "${experts//-/,}" "${low[@]}" --eval-every 10 --seed "$seed"
    done
  done
}

# The utility cost of differential privacy: topics, CoMiGS-1G1S, central DP with the default clip
# (C = 1) and a small one (C = 0.01) at two noise levels (seeded noise: reproducible, so not
# private; the ε is what a secret key would give).
dp() {
  local run
  for run in c1-z0.5 c0.01-z0.5 c0.01-z2; do
    local clip=${run%%-*} noise=${run##*-z}
    train "dp-topics/central-$run" --dp central --dp-clip "${clip#c}" --dp-noise "$noise" \
      --dp-seed 0
  done
}

case $part in
  main) main ;;
  llama) llama ;;
  ablations) ablations ;;
  hetero) hetero ;;
  dp) dp ;;
  all) main && llama && ablations && hetero && dp ;;
  *)
    echo "usage: bash scripts/results.sh [main|llama|ablations|hetero|dp|all]" >&2
    exit 2
    ;;
esac
