"""What a user sees first: the pretrained warning and record, progress output, help, --print-config,
the Python API beside the commands, and the HTML report in a real browser."""

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import segdino
from segdino.cli import build_parser
from segdino.cli import main as cli_main
from segdino.progress import Progress, track

pytest.importorskip("torchvision")  # the augmentations

TINY = ["--backbone", "vitt16", "--decoder-dim", "16", "--image-size", "32", "--batch-size", "4",
        "--num-workers", "0", "--device", "cpu", "--epochs", "2", "--augment", "none", "--lr", "2e-3"]
TINY_API = dict(backbone="vitt16", decoder_dim=16, image_size=32, batch_size=4, num_workers=0, device="cpu",
                epochs=2, augment="none", lr=2e-3)
WARNING = "warning: training without pretrained weights"


def segdino_cli(*args, cwd=None):
    """Run the command line as a user would, its output going to pipes (not a terminal)."""
    env = dict(os.environ, SEGDINO_NO_COMPILE="1")
    return subprocess.run([sys.executable, "-m", "segdino", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from segdino.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("u") / "data", 12, 4, 6, size=(32, 32), seed=1)


@pytest.fixture(scope="module")
def cli_run(data, tmp_path_factory):
    """A tiny run trained from random weights by the command line; (run folder, finished process)."""
    run = tmp_path_factory.mktemp("u") / "run"
    done = segdino_cli("train", "--data", data, "--out", run, *TINY)
    assert done.returncode == 0, done.stderr
    return run, done


# --- pretrained or not ------------------------------------------------------------------------


def test_training_without_weights_warns_once_and_records_pretrained_false(cli_run, data, tmp_path):
    run, done = cli_run
    text = done.stdout + done.stderr
    assert text.count(WARNING) == 1
    warning = next(line for line in text.splitlines() if line.startswith(WARNING))
    assert "docs/WEIGHTS.md" in warning and "--backbone-weights" in warning
    assert yaml.safe_load((run / "config.yaml").read_text())["pretrained"] is False
    assert "pretrained: false" in (run / "train.log").read_text().splitlines()
    # ... and at the top of the run's evaluation report, Markdown and HTML.
    report = tmp_path / "report"
    assert cli_main(["evaluate", "--model", str(run), "--data", str(data), "--out", str(report), "--device", "cpu",
                     "--quiet"]) == 0
    head = (report / "report.md").read_text().split("## Summary")[0]
    assert "pretrained: false" in head
    assert "pretrained: false" in (report / "report.html").read_text().split("Summary")[0]
    assert json.loads((report / "summary.json").read_text())["evaluation"]["pretrained"] is False


def test_training_with_backbone_weights_logs_format_and_checksum_and_does_not_warn(data, tmp_path, caplog, capsys):
    from safetensors.torch import save_file

    from segdino.backbone import DINOv3Backbone

    weights = tmp_path / "vitt16_backbone.safetensors"
    save_file({k: v.contiguous() for k, v in DINOv3Backbone("vitt16").vit.state_dict().items()}, str(weights))
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    with caplog.at_level(logging.INFO):
        segdino.train(data, tmp_path / "run", backbone_weights=str(weights), quiet=True,
                      **dict(TINY_API, epochs=1, steps_per_epoch=1))
    said = capsys.readouterr().out + caplog.text
    assert WARNING not in said
    assert sha in caplog.text and "timm's layout" in caplog.text
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["pretrained"] is True
    assert (saved["backbone_weights_format"], saved["backbone_weights_sha256"]) == ("timm", sha)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "pretrained: true" in log and sha in log


# --- progress ---------------------------------------------------------------------------------


def test_piped_training_output_has_no_carriage_returns_and_at_most_a_line_per_epoch(cli_run):
    _, done = cli_run
    text = done.stdout + done.stderr
    assert "\r" not in text
    epoch_lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert all(line.startswith(("epoch 1/2  loss", "epoch 2/2  loss")) for line in epoch_lines)
    # The setup summary is printed once, before the first epoch.
    lines = done.stdout.splitlines()
    assert lines.index("pretrained: false") < lines.index(epoch_lines[0])


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    pipe = io.StringIO()
    bar = Progress(1000, "evaluate", "case", stream=pipe)
    for _ in range(1000):
        bar.update()
    bar.close()
    assert "\r" not in pipe.getvalue()
    lines = pipe.getvalue().splitlines()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("evaluate: 1000/1000 cases")

    quiet = Terminal()
    with Progress(5, "predict", "image", quiet=True, stream=quiet) as p:
        p.update(5)
    assert "\r" not in quiet.getvalue() and quiet.getvalue().startswith("predict: 5/5 images")

    tty = Terminal()
    with Progress(5, "predict", "image", stream=tty) as p:
        p.update(5)
    assert "\r" in tty.getvalue()  # a live bar

    assert list(track(range(3), 3, "x", show=False)) == [0, 1, 2]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    pytest.importorskip("nibabel")
    from segdino.data.synthetic import write_volume_dataset

    return write_volume_dataset(tmp_path_factory.mktemp("u") / "Dataset001", 2, 1, 2, shape=(8, 32, 32), seed=2)


@pytest.fixture(scope="module")
def volume_model(tmp_path_factory):
    from segdino.volumes import parse_intensity, volume_settings

    model = segdino.build_model("vitt16", num_classes=3, decoder_dim=16, image_size=(32, 32),
                                volume=volume_settings(parse_intensity("ct:-160,240"), "axial", 1))
    path = tmp_path_factory.mktemp("u") / "volume_model.safetensors"
    segdino.save_model(model, path)
    return path


def test_volume_check_predict_and_evaluate_show_progress_per_volume(volumes, volume_model, tmp_path, capsys):
    # capsys stands in for a pipe: not a terminal.
    assert cli_main(["data", "check", "--data", str(volumes)]) == 0
    err = capsys.readouterr().err
    assert "check: 5/5 volumes" in err and "\r" not in err
    assert cli_main(["predict", "--model", str(volume_model), str(volumes / "imagesTs"), "--out", str(tmp_path / "p"),
                     "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "predict: 2/2 volumes" in err and "\r" not in err
    assert cli_main(["evaluate", "--model", str(volume_model), "--data", str(volumes), "--out", str(tmp_path / "e"),
                     "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "evaluate: 2/2 volumes" in err and "\r" not in err


# --- help and configuration -------------------------------------------------------------------


def _commands(parser, name="segdino"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _commands(sub, f"{name} {sub_name}")


def test_every_option_of_every_command_has_help():
    missing = []
    for name, parser in _commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS or not action.help.strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing
    assert len(list(_commands(build_parser()))) >= 8  # every command was visited


def test_train_help_shows_each_recipes_defaults():
    from segdino.train_config import TrainConfig, recipe_defaults

    parser = dict(_commands(build_parser()))["segdino train"]
    helps = {a.dest: a.help for a in parser._actions}
    seg, paper = recipe_defaults("segdino"), recipe_defaults("paper")
    differing = [k for k in seg if k in helps and seg[k] != paper[k] and seg[k] is not None]
    assert {"lr", "batch_size", "loss", "schedule"} <= set(differing)
    for k in differing:
        assert "segdino:" in helps[k] and "paper:" in helps[k], (k, helps[k])
    assert f"segdino: {seg['lr']}, paper: {paper['lr']}" in helps["lr"]
    assert f"(default {TrainConfig().seed})" in helps["seed"]


def test_print_config_prints_yaml_exits_and_round_trips_through_config(data, tmp_path, capsys):
    out = tmp_path / "never"
    args = ["train", "--data", str(data), "--out", str(out), "--recipe", "paper", "--epochs", "3",
            "--image-size", "32x48", "--backbone", "vitt16", "--print-config"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert not out.exists()  # nothing trained, nothing written
    assert printed["recipe"] == "paper" and printed["epochs"] == 3 and printed["image_size"] == [32, 48]
    assert printed["lr"] == 1e-4 and printed["compile"] is False  # the recipe's value; what runs on a CPU
    (tmp_path / "printed.yaml").write_text(text)
    assert cli_main(["train", "--config", str(tmp_path / "printed.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == text


def test_a_runs_config_yaml_is_accepted_as_config(cli_run, capsys):
    run, _ = cli_run
    assert cli_main(["train", "--config", str(run / "config.yaml"), "--print-config"]) == 0
    again = yaml.safe_load(capsys.readouterr().out)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved.pop("pretrained")
    assert again == saved


# --- the Python API ---------------------------------------------------------------------------


def test_api_train_matches_the_command(cli_run, data, tmp_path):
    run, _ = cli_run
    summary = segdino.train(data=data, out=tmp_path / "run", quiet=True, **TINY_API)
    assert summary["pretrained"] is False and Path(summary["best"]).is_file()
    assert Path(summary["config"]) == tmp_path / "run" / "config.yaml"
    strip = lambda p: [line.split(",")[:5] for line in p.read_text().splitlines()]  # noqa: E731 (not the seconds)
    assert strip(tmp_path / "run" / "log.csv") == strip(run / "log.csv")
    mine, theirs = (yaml.safe_load((r / "config.yaml").read_text()) for r in (tmp_path / "run", run))
    mine.pop("out"), theirs.pop("out"), mine.pop("quiet"), theirs.pop("quiet")
    assert mine == theirs
    assert "recipe: segdino" in segdino.train(data=data, out=tmp_path / "x", print_config=True)["config"]


def test_api_evaluate_and_predict_match_the_commands(cli_run, data, tmp_path):
    run, _ = cli_run
    assert cli_main(["evaluate", "--model", str(run), "--data", str(data), "--out", str(tmp_path / "cli"),
                     "--device", "cpu"]) == 0
    summary = segdino.evaluate(run, data, tmp_path / "api", device="cpu", quiet=True)
    cli_summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["per_class"] == cli_summary["per_class"]
    assert Path(summary["outputs"]["report_html"]).is_file() and Path(summary["outputs"]["cases_csv"]).is_file()

    images = sorted((data / "images").iterdir())[:3]
    assert cli_main(["predict", "--model", str(run), *map(str, images), "--out", str(tmp_path / "pcli"),
                     "--device", "cpu"]) == 0
    result = segdino.predict(str(run), [str(p) for p in images], out=tmp_path / "papi", device="cpu", overlays=True)
    assert result["errors"] == [] and len(result["masks"]) == 3
    for path in result["masks"]:
        assert Path(path).read_bytes() == (tmp_path / "pcli" / "masks" / Path(path).name).read_bytes()
    assert len(list((tmp_path / "papi" / "overlays").iterdir())) == 3
    # The in-memory form keeps working: masks at each image's size.
    masks = segdino.predict(segdino.load_model(run), [str(p) for p in images])
    from PIL import Image

    assert np.array_equal(masks[0] > 0, np.asarray(Image.open(result["masks"][0])) > 0)

    with pytest.raises(segdino.ConfigError, match="unknown option 'splitt'"):
        segdino.evaluate(run, data, tmp_path / "x", splitt="val")
    with pytest.raises(segdino.ConfigError, match="split must be one of"):
        segdino.evaluate(run, data, tmp_path / "x", split="vall")


def test_api_predicts_volumes_in_memory_and_to_files(volumes, volume_model, tmp_path):
    from segdino.volumes.io import read_volume

    image = sorted((volumes / "imagesTs").iterdir())[0]
    labels = segdino.predict(str(volume_model), [str(image)], device="cpu")
    assert labels[0].shape == read_volume(image).array.shape
    written = segdino.predict(str(volume_model), [str(image)], out=tmp_path / "p", device="cpu", quiet=True)
    assert np.array_equal(read_volume(written["masks"][0]).array, labels[0])


# --- the HTML report in a browser -------------------------------------------------------------

PROBE = """<script>
window.addEventListener('load', function () {
  var widths = [];
  for (var img of document.images) widths.push(img.complete ? img.naturalWidth : -1);
  document.body.setAttribute('data-image-widths', JSON.stringify(widths));
  var t = document.querySelector('table.summary');
  document.body.setAttribute('data-summary-rows', t ? t.rows.length : 0);
  document.body.setAttribute('data-summary-text', t ? t.innerText.replace(/\\s+/g, ' ') : '');
});
</script>"""


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_html_report_is_self_contained_and_renders_in_a_browser(cli_run, data, tmp_path):
    import re

    run, _ = cli_run
    summary = segdino.evaluate(run, data, tmp_path / "report", split="all", device="cpu", quiet=True)
    page = Path(summary["outputs"]["report_html"]).read_text()
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(sources) >= 6  # histogram, size plot, learning curves, three cases, the lowest cases
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "report.md" not in page and 'href="' not in page  # nothing outside the file
    browser = _browser()
    if browser is None:
        pytest.skip("no headless Chromium on this machine (Debian: apt-get install chromium)")
    probe = tmp_path / "elsewhere" / "probe.html"  # moved away from figures/: only embedded images can load
    probe.parent.mkdir()
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    dom = done.stdout
    widths = json.loads(re.search(r'data-image-widths="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    assert len(widths) == len(sources) and all(w > 0 for w in widths), widths
    assert int(re.search(r'data-summary-rows="(\d+)"', dom).group(1)) >= 5
    text = re.search(r'data-summary-text="([^"]*)"', dom).group(1)
    dice = summary["per_class"]["1"]["dice"]["mean"]
    assert "Dice" in text and f"{dice:.3f}" in text
