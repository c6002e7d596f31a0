#!/bin/bash
# Several real-data runs side by side on one GPU, resumable across device calls.
# usage: benchmarks/gpu_batch.sh SECONDS "dataset:recipe:seed[:ablation[:plain]] ..." [extra realdata.py args]
# Datasets are folders under .data/ (benchmarks/realdata.py pack). An ablation is one of
# realdata.py's ABLATIONS (no_tpa, no_tpa_wide, no_sad, d128, d512, last_tap; full = the recipe's
# model): it is passed as --ablation and appended to the run's name. Results and logs go to
# $OUT/results$TAG.tar (the device returns few files; TAR names it otherwise), a summary to stdout. TAG (environment)
# is appended to run names, for variants of a recipe given by the extra arguments. A fifth field,
# `plain`, trains on the model's own modules (--no-fused-decoder) instead of the fused decoder and
# appends -plain to the name: "kvasir-seg:segdino:0:full:plain". The device's copy of .git can be older than
# the files it runs (results then record the commit with "-dirty"): SEGDINO_COMMIT=<hash> names it.
limit=$1; jobs=$2; shift 2
mkdir -p results/gpu runs
started=$(mktemp); trap 'rm -f "$started"' EXIT  # its mtime: this call's start
run_name() {  # dataset recipe seed ablation [plain] -> the run's name
  local suffix=""
  [ -n "$4" ] && [ "$4" != full ] && suffix="-$4"
  [ "$5" = plain ] && suffix="$suffix-plain"
  echo "$1-$2-s$3$suffix$TAG"
}
for job in $jobs; do
  IFS=: read -r data recipe seed ablation path <<< "$job"
  name=$(run_name "$data" "$recipe" "$seed" "$ablation" "$path")
  plain=(); [ "$path" = plain ] && plain=(--no-fused-decoder)
  OMP_NUM_THREADS=3 timeout "$limit" python3 benchmarks/realdata.py run --data ".data/$data" --recipe "$recipe" --seed "$seed" \
    --out "runs/$name" --json "results/gpu/$name.json" --resume --num-workers 3 ${ablation:+--ablation "$ablation"} "${plain[@]}" "$@" \
    > "runs/$name.out" 2>&1 &
done
wait
for job in $jobs; do
  IFS=: read -r data recipe seed ablation path <<< "$job"; name=$(run_name "$data" "$recipe" "$seed" "$ablation" "$path")
  # A cut rerun's log must not replace the log of a result recorded earlier: copy it only when this
  # call wrote the result, or when there is no result yet.
  if [ ! -e "results/gpu/$name.json" ] || [ "results/gpu/$name.json" -nt "$started" ]; then
    cp "runs/$name/log.csv" "results/gpu/$name.log.csv" 2>/dev/null
  fi
  grep -E "Error|error:" "runs/$name.out" | tail -n 3
  echo "$name: $(tail -n 1 "runs/$name/log.csv" 2>/dev/null) $(tail -n 1 "runs/$name.out")"
done
tar -cf "$OUT/${TAR:-results$TAG}.tar" results/gpu
