#!/bin/bash
# Small lesions on one GPU: LIDC nodules with planned spacing/patches/intensity augmentation
# (3 seeds side by side), and the generated whole-scan task with vits16 (patches + sliding
# windows beside today's whole-slice resizing). Each part is meant to finish in under ~8 minutes.
#
# The GPU machine sees only the working tree and has no nibabel. Prepare on this machine, once:
#   mkdir -p .data/pylib
#   cp -r /work/shared/data/lidc-nodules .data/lidc-nodules            # 27 MB, nnU-Net raw
#   cp -r "$(python -c 'import nibabel, os; print(os.path.dirname(nibabel.__file__))')" .data/pylib/
#                                                                      # nibabel, pure Python, ~13 MB
# then run with carry [".data/lidc-nodules", ".data/pylib"] (about 40 MB of the 64 MB allowed):
#   bash benchmarks/gpu_lesions.sh lidc      # or: scan, or: all (both parts side by side), or:
#                                            # scan-default (the default plan alone on the whole scans)
#   bash benchmarks/gpu_lesions.sh jobs "NAME|DATA|TRAIN ARGS" ...   # any runs side by side, e.g.
#     "lidc-resized256-s0|.data/lidc-nodules|--intensity lung --image-size 256 --seed 0"
# Results: one tar, $OUT/lesions$TAG.tar, rewritten every minute so that a call cut short still
# returns what was done: results/gpu/lesions/lesions-<name>.json (per-volume test Dice, HD95,
# lesion detection F1, the command, GPU and versions), each run's console log and log.csv, and
# runs/*/{plan.json,config.yaml,report/summary.json}. (The device returns few files.)
# Variables: EPOCHS, STEPS (default 30 x 100 as in today's baseline), SPACING (LIDC: plan = the
# default plan, i.e. whole slices resized, as these are crops; auto = patches at the training median; a value
# such as 0.17 = patches at that spacing),
# SEEDS (default "0 1 2"), LIMIT (seconds per training, default 420; LIMIT_SCAN for the whole-scan
# runs, default LIMIT minus 60 s for writing their data), TAG (appended to the tar's name).
# EXTRA: more `segdino train` options for every run (e.g. --volume-cache 700).
# DEADLINE (seconds from the start, default 570): evaluations are cut there, so that the last
# pack happens inside a 600 s device call whatever the runs did.
set -u
what=${1:-all}
export PYTHONPATH="$PWD/.data/pylib:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NCCL_NVLS_ENABLE=0
EPOCHS=${EPOCHS:-30}; STEPS=${STEPS:-100}; SEEDS=${SEEDS:-"0 1 2"}; LIMIT=${LIMIT:-420}
LIMIT_SCAN=${LIMIT_SCAN:-$((LIMIT - 60))}; TAG=${TAG:-}; DEADLINE=${DEADLINE:-570}
SPACING=${SPACING:-plan}  # plan: the default plan (no --spacing flag)
OUT=${OUT:-results/gpu}
export RES=results/gpu/lesions
mkdir -p runs "$OUT" "$RES"
pack() { tar -cf "$OUT/.lesions$TAG.tar" "$RES" runs/*/plan.json runs/*/config.yaml runs/*/report/summary.json \
  2>/dev/null; mv -f "$OUT/.lesions$TAG.tar" "$OUT/lesions$TAG.tar"; }
( while sleep 60; do pack; done ) &
packer=$!
python3 -c "import nibabel" 2>/dev/null || { echo "nibabel missing: carry .data/pylib (see the header)"; exit 2; }

result() {  # result NAME RUN REPORT COMMAND...
  local name=$1 run=$2 report=$3; shift 3
  python3 - "$name" "$run" "$report" "$*" <<'EOF'
import json, os, sys, torch, timm
name, run, report, command = sys.argv[1:5]
s = json.load(open(f"{report}/summary.json"))
cls = next(iter(s["per_class"].values()))
les = next(iter(s["lesions"].values()))
try:
    plan = json.load(open(f"{run}/plan.json"))
except OSError:
    plan = None
out = {"name": name, "command": command, "dice_per_volume": cls["dice"]["mean"],
       "dice_median": cls["dice"]["median"], "volumes": cls["dice"]["count"],
       "hd95_mm": cls.get("hd95", {}).get("mean"), "lesion_f1": les["detection_f1"],
       "lesion_recall": les["detection_recall"], "lesion_precision": les["detection_precision"],
       "plan": plan, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
       "torch": torch.__version__, "timm": timm.__version__}
json.dump(out, open(os.path.join(os.environ["RES"], f"lesions-{name}.json"), "w"), indent=1)
print(json.dumps({k: out[k] for k in ("name", "dice_per_volume", "hd95_mm", "lesion_f1")}))
EOF
}

train_eval() {  # train_eval LIMIT NAME DATA TRAIN-ARGS...
  local limit=$1 name=$2 data=$3; shift 3
  local cmd="python3 -m segdino train --data $data --out runs/$name --epochs $EPOCHS --steps-per-epoch $STEPS \
--num-workers 3 --quiet --overwrite ${EXTRA:-} $*"
  local log="$RES/$name.out"
  ( OMP_NUM_THREADS=3 timeout "$limit" $cmd > "$log" 2>&1
    cp "runs/$name/log.csv" "$RES/$name.log.csv" 2>/dev/null
    local left=$((DEADLINE - SECONDS - 5))
    (( left > 10 )) || left=10
    timeout "$left" python3 -m segdino evaluate --model "runs/$name" --data "$data" --split test --out "runs/$name/report" \
      >> "$log" 2>&1 && result "$name" "runs/$name" "runs/$name/report" "$cmd"
    tail -n 2 "$log" ) &
  pids+=($!)
}
pids=()

if [[ $what == lidc || $what == all ]]; then
  [[ -d .data/lidc-nodules ]] || { echo "missing .data/lidc-nodules (see the header)"; exit 2; }
  # The default plan (whole slices resized for these crops: segdino.volumes.planning.crop_plan), or
  # patches at SPACING. (Runs before 2026-12-02 named lidc-patches-plan-* were patches at 0.236 mm.)
  tag="-patches-sp$SPACING"; spacing=(--spacing "$SPACING"); [[ $SPACING == plan ]] && { tag="-default"; spacing=(); }
  for seed in $SEEDS; do
    train_eval "$LIMIT" "lidc$tag-s$seed" .data/lidc-nodules --intensity lung "${spacing[@]}" --seed "$seed" \
      --augment segdino
  done
fi

if [[ $what == jobs ]]; then
  shift
  for job in "$@"; do
    IFS='|' read -r name data args <<< "$job"
    # shellcheck disable=SC2086  # the job's arguments are words
    train_eval "$LIMIT" "$name" "$data" $args
  done
fi

if [[ $what == scan || $what == scan-default || $what == all ]]; then
  data=runs/whole-scan-data
  if [[ ! -f $data/dataset.json ]]; then
    python3 -c "
from segdino.data.whole_scan import write_whole_scan_dataset
write_whole_scan_dataset('$data', 16, 2, 6, shape=(40, 512, 512), spacing=(2.5, 0.7, 0.7), seed=0, workers=12)
print('whole-scan data written')"
  fi
fi
if [[ $what == scan-default ]]; then
  # The default plan alone (no --spacing: the median refined until the median lesion is 2 tokens
  # across, 0.36 mm here), the whole budget for one run.
  train_eval "$LIMIT_SCAN" scan-vits16-default "$data" --backbone vits16 --intensity ct:-200,250 --seed 0
fi
if [[ $what == scan || $what == all ]]; then
  # The new pipeline (patches of 256 px at the planned 0.7 mm, sliding windows; and at 0.35 mm,
  # where a 3-20 mm lesion is 8-57 px, 0.5-3.6 tokens) beside today's (whole slices resized to
  # 256 px), same data, same budget.
  train_eval "$LIMIT_SCAN" scan-vits16-patches "$data" --backbone vits16 --intensity ct:-200,250 --spacing auto --seed 0
  train_eval "$LIMIT_SCAN" scan-vits16-patches-sp0.35 "$data" --backbone vits16 --intensity ct:-200,250 \
    --spacing 0.35,0.35 --seed 0
  train_eval "$LIMIT_SCAN" scan-vits16-resized "$data" --backbone vits16 --intensity ct:-200,250 --image-size 256 --seed 0
fi
wait "${pids[@]}"
kill "$packer" 2>/dev/null
pack
tar -tf "$OUT/lesions$TAG.tar" | grep -c . | sed 's/^/files packed: /'
cat "$RES"/lesions-*.json 2>/dev/null | grep -E '"(name|dice_per_volume|lesion_f1)"' 
