#!/bin/bash
# The CPU-sized whole-scan task (the one tests/test_lesions.py and `segdino demo --volumes` train):
# several small-model recipes side by side, each trained, then evaluated on the test volumes.
# usage: bash benchmarks/whole_scan_small.sh "NAME|TRAIN ARGS" ...
# Data: CASES (default "8 1 3": train, val, test) generated whole sections of 16x128x128 at 2.5 x 1.0 x 1.0 mm, 2-4
# lesions of DIAMETERS mm (default 8,20). Every run: vitt16, decoder 32, batch 8, 16 steps per epoch,
# --intensity ct:-200,250, foreground ratio 0.5, no workers; its arguments add to or override these.
# Output: $OUT/small$TAG.tar (logs, summaries) and one line per run on stdout. On a GPU machine the
# runs share the GPU; THREADS (default 2) CPU threads each. EVAL_ARGS: more `segdino evaluate` options
# (e.g. --tta).
set -u
# The GPU machine has no nibabel: carry .data/pylib as benchmarks/gpu_lesions.sh says.
export PYTHONPATH="$PWD/.data/pylib:$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-results}; TAG=${TAG:-}; DIAMETERS=${DIAMETERS:-8,20}; THREADS=${THREADS:-2}; CASES=${CASES:-"8 1 3"}
read -r n_train n_val n_test <<< "$CASES"
root=runs/small-scan; data=$root/data-${DIAMETERS/,/-}
[[ $CASES == "8 1 3" ]] || data=$data-$n_train-$n_val-$n_test
mkdir -p "$root" "$OUT"
[[ -f $data/dataset.json ]] || python3 -c "
from segdino.data.whole_scan import write_whole_scan_dataset
write_whole_scan_dataset('$data', $n_train, $n_val, $n_test, shape=(16, 128, 128), spacing=(2.5, 1.0, 1.0), seed=0, lesions=(2, 4),
                         diameters=($DIAMETERS))" || exit 2
for job in "$@"; do
  name=${job%%|*}; args=${job#*|}
  ( t0=$(date +%s)
    OMP_NUM_THREADS=$THREADS python3 -m segdino train --data "$data" --out "$root/$name" --overwrite --quiet \
      --backbone vitt16 --decoder-dim 32 --batch-size 8 --steps-per-epoch 16 --warmup-epochs 0.5 --num-workers 0 \
      --intensity ct:-200,250 --foreground-ratio 0.5 $args > "$root/$name.out" 2>&1
    t1=$(date +%s)
    OMP_NUM_THREADS=$THREADS python3 -m segdino evaluate --model "$root/$name" --data "$data" --split test \
      --out "$root/$name/report" ${EVAL_ARGS:-} >> "$root/$name.out" 2>&1
    python3 - "$root/$name/report/summary.json" "$name" "$((t1 - t0))" "$args" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
c, l = next(iter(s["per_class"].values())), next(iter(s["lesions"].values()))
print(f"{sys.argv[2]}: dice {c['dice']['mean']:.3f} f1 {l['detection_f1']:.3f} (recall {l['detection_recall']:.3f}, "
      f"precision {l['detection_precision']:.3f}) train {sys.argv[3]} s | {sys.argv[4]}")
PY
  ) &
done
wait
tar -cf "$OUT/small$TAG.tar" "$root"/*.out "$root"/*/log.csv "$root"/*/config.yaml "$root"/*/report/summary.json \
  "$root"/*/report/lesions.csv 2>/dev/null
