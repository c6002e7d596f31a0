"""benchmarks/realdata.py (packing, ablations by name, model costs) and benchmarks/accuracy_tables.py
(tables and curves from results files), on tiny synthetic data."""

import csv
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    path = ROOT / "benchmarks" / f"{name}.py"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


realdata = _load("realdata")
tables = _load("accuracy_tables")


# --- realdata.py -----------------------------------------------------------------------------

def test_pack_copies_jpegs_already_at_size_and_resizes_the_rest(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(6)]
    for i, n in enumerate(names):
        side = 32 if i % 2 == 0 else 48  # even: already the packed size
        img = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
        img.save(src / "images" / f"{n}.jpg", quality=70)
        mask = np.zeros((side, side), np.uint8)
        mask[4:20, 4:20] = 255
        Image.fromarray(mask).save(src / "masks" / f"{n}.png")
    (src / "splits.json").write_text(json.dumps({"train": names[:4], "val": names[4:5], "test": names[5:]}))
    out = tmp_path / "packed"
    info = realdata.pack(src, out, 32, quality=80)
    assert info["counts"] == {"train": 4, "val": 1, "test": 1}
    assert info["copied_jpeg"] == 3  # c0, c2, c4 (c5 is test, kept as released anyway)
    for n in ("c0", "c2", "c4"):
        assert (out / "images" / f"{n}.jpg").read_bytes() == (src / "images" / f"{n}.jpg").read_bytes()
    assert Image.open(out / "images" / "c1.jpg").size == (32, 32)
    assert Image.open(out / "images" / "c5.jpg").size == (48, 48)  # test at its own size
    assert Image.open(out / "masks" / "c1.png").size == (32, 32)
    assert "3 already 32x32 JPEG copied" in (out / "SOURCE.txt").read_text()


def test_every_ablation_resolves_to_the_model_it_names():
    from segdino.train_config import resolve_config

    opts = {name: resolve_config(realdata.ablation_options(name, "vits16")) for name in realdata.ABLATIONS}
    assert opts["full"].model_options() == dict(taps=None, no_tpa=False, no_sad=False, sad_blocks=1)
    assert opts["full"].decoder_dim == 256
    assert opts["no_tpa"].no_tpa and opts["no_tpa"].decoder_dim == 256
    wide = opts["no_tpa_wide"]
    assert (wide.no_tpa, wide.decoder_dim, wide.sad_blocks) == (True, 512, 2)
    assert opts["no_sad"].no_sad and not opts["no_sad"].no_tpa
    assert (opts["d128"].decoder_dim, opts["d512"].decoder_dim) == (128, 512)
    assert opts["last_tap"].taps == (11, 11, 11, 11)
    assert realdata.ablation_options("last_tap", "vitl16")["taps"] == (23, 23, 23, 23)


def test_an_ablation_and_the_option_it_sets_are_refused_together(tmp_path):
    args = realdata.build_parser().parse_args(["run", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                                               "--ablation", "d128", "--decoder-dim", "64"])
    with pytest.raises(SystemExit, match="--ablation d128 sets --decoder-dim"):
        realdata.run(args)
    assert not (tmp_path / "r").exists()


def test_model_cost_counts_once_and_reads_old_and_new_configs_alike(tmp_path):
    import segdino

    cache = tmp_path / "costs.json"
    old = {"backbone": "vitt16", "decoder_dim": 16}  # a config from before the ablation options
    new = {"backbone": "vitt16", "decoder_dim": 16, "taps": None, "no_tpa": False, "no_sad": False, "sad_blocks": 1}
    cost = realdata.model_cost(old, cache)
    model = segdino.build_model("vitt16", decoder_dim=16)
    assert cost["params"] == model.count_parameters()["total"]
    assert cost["params_decoder"] == model.count_parameters()["decoder"]
    assert cost["gflops"] > 0
    # Counted once: a later call, with the same model spelt out, reads the cache.
    [(key, value)] = json.loads(cache.read_text()).items()
    cache.write_text(json.dumps({key: {**value, "gflops": -1.0}}))
    assert realdata.model_cost(new, cache)["gflops"] == -1.0
    no_tpa = realdata.model_cost({**old, "no_tpa": True}, cache)
    assert no_tpa["params"] == cost["params"] and 0 < no_tpa["gflops"] < cost["gflops"]


# --- accuracy_tables.py -----------------------------------------------------------------------

def _log(path, val_dices):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train_loss", "val_dice", "lr", "seconds", "images_per_s"])
        for i, v in enumerate(val_dices, 1):
            w.writerow([i, 10 * i, 0.5, v, 1e-4, 2.0, 100.0])


def _result(folder, name, dataset, recipe, seed, dice, iou, hd95, failures, val, best, config=None, **extra):
    from segdino.train_config import recipe_defaults

    cfg = {**recipe_defaults(recipe), "backbone": "vits16", "decoder_dim": 256, **(config or {})}
    cfg["image_size"] = list(cfg["image_size"])
    d = {"dataset": dataset, "recipe": recipe, "seed": seed, "epochs": 4, "best_epoch": best, "best_val_dice": val,
         "epoch_seconds_total": 8.0, "config": cfg,
         "test": {"mean_over_classes": {"dice": {"mean": dice}, "iou": {"mean": iou},
                                        "hd95": {"mean": hd95, "mean_with_failures_as_diagonal": hd95 + 10}},
                  "per_class": {"1": {"hd95": {"failures": failures}}}}, **extra}
    (folder / f"{name}.json").write_text(json.dumps(d))


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "gpu"
    folder.mkdir()
    _result(folder, "ddti-segdino-s0", "ddti", "segdino", 0, 0.80, 0.70, 20.0, 2, 0.85, 3)
    _result(folder, "ddti-segdino-s1", "ddti", "segdino", 1, 0.82, 0.72, 22.0, 1, 0.87, 4)
    _log(folder / "ddti-segdino-s0.log.csv", [0.5, 0.7, 0.85, 0.84])
    _log(folder / "ddti-segdino-s1.log.csv", [0.4, 0.8, 0.86, 0.87])
    _log(folder / "ddti-segdino-s2.log.csv", [0.3, 0.6])  # cut by a time limit: no result
    _result(folder, "ddti-segdino-s0-augpaper", "ddti", "segdino", 0, 0.83, 0.74, 19.0, 0, 0.88, 4,
            config={"augment": "paper"})
    _result(folder, "ddti-segdino-s0-no_tpa", "ddti", "segdino", 0, 0.75, 0.65, float("nan"), 3, 0.80, 2,
            config={"no_tpa": True}, ablation="no_tpa", params=123_456_789, gflops_per_image=9.87)
    (folder / "bench_fused.json").write_text(json.dumps({"device": "x"}))  # not a run: skipped
    return folder


def test_runs_are_grouped_over_seeds_with_missing_seeds_named(results):
    groups = tables.group_runs(tables.read_runs(results))
    assert set(groups) == {("ddti", "segdino", "full", ""), ("ddti", "segdino", "full", "-augpaper"),
                           ("ddti", "segdino", "no_tpa", "")}
    base = groups["ddti", "segdino", "full", ""]
    assert [r.seed for r in base.finished] == [0, 1]
    assert base.seeds_text() == "2 (0, 1); missing 2: stopped at epoch 2 of 4"
    row = next(line for line in tables.recipes_table(groups, ["ddti"]).splitlines() if "| segdino |" in line)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    # mean ± sample std of the two seeds: Dice 0.81 ± 0.014, IoU 0.71 ± 0.014, HD95 21.0 ± 1.4
    assert cells[3:10] == ["0.810 ± 0.014", "0.710 ± 0.014", "21.0 ± 1.4 (2, 1)", "31.0 ± 1.4",
                           "0.860 ± 0.014", "4 ± 1", "8 ± 0"]
    assert cells[10] == '`benchmarks/gpu_batch.sh 560 "ddti:segdino:0 ddti:segdino:1 ddti:segdino:2" --epochs 4`'
    paper = next(line for line in tables.recipes_table(groups, ["ddti"]).splitlines() if "| paper |" in line)
    assert "none; missing 0, 1, 2" in paper


def test_variant_and_ablation_rows_carry_their_options_costs_and_commands(results):
    groups = tables.group_runs(tables.read_runs(results))
    variants = tables.variants_table(groups, ["ddti"])
    assert "| DDTI | `segdino` `--augment paper` | -augpaper | 1 (0) | 0.880 | 0.830 |" in variants
    assert '`TAG=-augpaper benchmarks/gpu_batch.sh 560 "ddti:segdino:0" --epochs 4 --augment paper`' in variants
    assert "| DDTI | `segdino` | - | 1 (0) | 0.850 | 0.800 |" in variants  # its recipe, same seed only
    ablations = tables.ablations_table(groups, ["ddti"])
    row = next(line for line in ablations.splitlines() if "`no_tpa`" in line)
    assert "| 123.46 | 9.9 | 1 (0); missing 1, 2 | 0.750 | 0.650 | - (3) |" in row  # HD95 NaN: every image failed
    assert '"ddti:segdino:0:no_tpa ddti:segdino:1:no_tpa ddti:segdino:2:no_tpa"' in row
    assert len([line for line in ablations.splitlines() if line.startswith("| DDTI")]) == len(realdata.ABLATIONS)


def test_doc_blocks_are_rewritten_and_checked(results, tmp_path):
    doc = tmp_path / "R.md"
    doc.write_text("# R\n\nprose kept\n\n<!-- accuracy-table seeds dataset=ddti -->\nstale\n"
                   "<!-- /accuracy-table -->\n\nmore prose\n")
    argv = ["--results", str(results), "--doc", str(doc)]
    assert tables.main(argv + ["--check"]) == 1 and "stale" in doc.read_text()  # --check changes nothing
    assert tables.main(argv) == 0
    text = doc.read_text()
    assert "stale" not in text and text.startswith("# R\n\nprose kept\n") and text.endswith("\n\nmore prose\n")
    assert "| DDTI | segdino | 2 | - | - | - | - | 0.600 (2) | 4 | stopped at epoch 2 of 4; not scored |" in text
    assert "python benchmarks/accuracy_tables.py" in text
    assert tables.main(argv + ["--check"]) == 0  # idempotent


def test_a_doc_block_can_make_a_variant_the_recipe_row(results, tmp_path):
    """rows=ddti:segdino:-augpaper: the runs made under a changed rule, with its option spelled out."""
    doc = tmp_path / "R.md"
    doc.write_text("<!-- accuracy-table recipes dataset=ddti rows=ddti:segdino:-augpaper -->\n"
                   "<!-- /accuracy-table -->\n<!-- accuracy-table seeds dataset=ddti rows=ddti:segdino:-augpaper -->\n"
                   "<!-- /accuracy-table -->\n")
    assert tables.main(["--results", str(results), "--doc", str(doc)]) == 0
    text = doc.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| DDTI | segdino (--augment paper) | 1 (0)"))
    assert "0.830" in row and '`TAG=-augpaper benchmarks/gpu_batch.sh 560 "ddti:segdino:0 ddti:segdino:1 ' in row
    assert "| DDTI | segdino (--augment paper) | 0 | 0.830 |" in text and "| DDTI | segdino | " not in text
    doc.write_text("<!-- accuracy-table ablations rows=ddti:segdino:-augpaper -->\n<!-- /accuracy-table -->\n")
    with pytest.raises(SystemExit, match="rows= applies to the recipes and seeds tables"):
        tables.main(["--results", str(results), "--doc", str(doc)])


def test_curves_figure_is_a_small_png(results, tmp_path):
    out = tmp_path / "curves.png"
    assert tables.main(["--results", str(results), "--figure", str(out)]) == 0
    for path in (out, tmp_path / "curves-ablations.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 200_000


def test_results_doc_is_what_the_results_give():
    """docs/RESULTS.md's generated accuracy tables match results/gpu/ (regenerate them when results change)."""
    assert tables.main(["--doc", str(ROOT / "docs" / "RESULTS.md"), "--check"]) == 0, (
        "run: python benchmarks/accuracy_tables.py --doc docs/RESULTS.md --figure docs/figures/val_dice_curves.png")


def test_an_ablation_run_trains_scores_and_records_its_model(tmp_path):
    from tests.training.conftest import write_discs

    data = write_discs(tmp_path / "discs", n=12, size=32)
    names = [f"c{i:02d}" for i in range(12)]
    (data / "splits.json").write_text(json.dumps({"train": names[:8], "val": names[8:10], "test": names[10:]}))
    out, result = tmp_path / "run", tmp_path / "r.json"
    argv = ["run", "--data", str(data), "--out", str(out), "--json", str(result), "--backbone", "vitt16",
            "--ablation", "no_sad", "--decoder-dim", "16", "--image-size", "32", "--epochs", "1",
            "--steps-per-epoch", "1", "--batch-size", "4", "--device", "cpu", "--num-workers", "0",
            "--costs", str(tmp_path / "costs.json")]
    realdata.run(realdata.build_parser().parse_args(argv), argv)
    d = json.loads(result.read_text())
    assert d["ablation"] == "no_sad" and d["config"]["no_sad"] and d["config"]["decoder_dim"] == 16
    import segdino

    assert segdino.load_model(out / "best.safetensors").config.no_sad
    assert d["params"] == segdino.build_model("vitt16", decoder_dim=16, no_sad=True).count_parameters()["total"]
    assert d["gflops_per_image"] > 0 and d["gflops_at"].startswith("256x256")
    assert d["command"] == "python benchmarks/realdata.py " + " ".join(argv)
    assert 0.0 <= d["test"]["mean_over_classes"]["dice"]["mean"] <= 1.0
    # A call cut while scoring leaves a finished run; --resume in the next call scores it again
    # (the test report lives beside the run folder, which training keeps to its own files).
    result.unlink()
    realdata.run(realdata.build_parser().parse_args(argv + ["--resume"]), argv + ["--resume"])
    assert json.loads(result.read_text())["best_epoch"] == d["best_epoch"]
    assert (tmp_path / "run-test").is_dir() and not (out / "report").exists()


# --- gpu_batch.sh -----------------------------------------------------------------------------

def _fake_batch(tmp_path, write_result: bool):
    """benchmarks/gpu_batch.sh in a scratch folder, with a python3 that logs one epoch per job and
    writes the job's result JSON only when ``write_result`` (a run cut by the time limit writes none)."""
    import shutil
    import subprocess

    work, bin_dir = tmp_path / "work", tmp_path / "bin"
    (work / "benchmarks").mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    shutil.copy(ROOT / "benchmarks" / "gpu_batch.sh", work / "benchmarks")
    fake = bin_dir / "python3"
    fake.write_text("#!/bin/bash\n"
                    'while [ $# -gt 0 ]; do case "$1" in --out) out=$2; shift;; --json) js=$2; shift;; esac; shift; done\n'
                    'mkdir -p "$out"; printf "epoch,val_dice\\n1,0.5\\n" > "$out/log.csv"\n'
                    + ('echo "{}" > "$js"\n' if write_result else ""))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path)}
    r = subprocess.run(["bash", "benchmarks/gpu_batch.sh", "5", "ddti:segdino:0"], cwd=work, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return work / "results" / "gpu"


def test_a_cut_rerun_does_not_replace_the_log_of_a_recorded_result(tmp_path):
    results = _fake_batch(tmp_path, write_result=True)
    assert (results / "ddti-segdino-s0.log.csv").read_text() == "epoch,val_dice\n1,0.5\n"  # this call's result
    (results / "ddti-segdino-s0.log.csv").write_text("the complete log of the recorded result\n")
    import time

    time.sleep(1.1)  # the next call starts later than the result was written (mtime resolution)
    results = _fake_batch(tmp_path, write_result=False)
    assert (results / "ddti-segdino-s0.log.csv").read_text() == "the complete log of the recorded result\n"
