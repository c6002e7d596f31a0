#!/bin/bash
# Several real-data runs side by side on one GPU, resumable across device calls.
# usage: benchmarks/gpu_batch.sh SECONDS DATASET "recipe:seed ..." [extra realdata.py args]
limit=$1; data=$2; jobs=$3; shift 3
mkdir -p "$OUT/results"
for job in $jobs; do
  recipe=${job%%:*}; seed=${job##*:}
  name=$(basename "$data")-$recipe-s$seed
  timeout "$limit" python3 benchmarks/realdata.py run --data "$data" --recipe "$recipe" --seed "$seed" \
    --out "runs/$name" --json "$OUT/results/$name.json" --resume --num-workers 2 "$@" > "$OUT/$name.log" 2>&1 &
done
wait
for job in $jobs; do
  recipe=${job%%:*}; seed=${job##*:}; name=$(basename "$data")-$recipe-s$seed
  cp "runs/$name/log.csv" "$OUT/$name.csv" 2>/dev/null
  echo "$name: $(tail -n 1 "runs/$name/log.csv" 2>/dev/null)"
done
