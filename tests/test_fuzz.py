"""Fuzzing the readers: image, mask, volume (NIfTI), checkpoint (safetensors, .pth), shard index,
YAML training config and split file.

Valid files are damaged in seeded ways (random bytes, truncation, bit flips, overwritten header
bytes, a valid magic number followed by noise) and each reader must either return a well-formed
result or raise our own error type (:class:`segdino.SegDINOError`): never another exception, a
crash, a hang, or an unbounded allocation.

The cases run in a separate Python process so that a crash or a hang inside a C decoder is seen
(and named) instead of taking the test run with it; each case has a time limit. Environment:
``SEGDINO_FUZZ_CASES`` (default 200) and ``SEGDINO_FUZZ_SEED`` (default 0) run more or other cases.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CASE_SECONDS = 10  # a reader slower than this on a file of a few kB is hanging
STALL_SECONDS = 30  # no case finished for this long: the worker is stuck outside Python
STARTUP_SECONDS = 180  # importing torch and building the first model, on a busy machine
MAX_GROWTH_MIB = 1024  # peak memory a single damaged file may add
READERS = ("image", "mask", "volume", "pth", "safetensors", "model", "index", "yaml", "splits")
# Share of the cases per reader (out of 200): the whole-model files are the slowest to read.
SHARES = {"image": 60, "mask": 30, "volume": 40, "pth": 35, "safetensors": 15, "model": 20,
          "index": 12, "yaml": 12, "splits": 12}
TEXT_SUFFIXES = (".json", ".yaml")
SPLIT_CASES = ("c0", "c1", "c2", "c3", "c4")


# --- valid files to start from -------------------------------------------------------------------


def make_seed_files(folder: Path) -> dict[str, list[tuple[Path, str]]]:
    """Valid files per reader: ``{reader: [(path, suffix), ...]}``; deterministic."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    import segdino
    from segdino.volumes.io import write_nifti

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seeds: dict[str, list[tuple[Path, str]]] = {r: [] for r in READERS}
    rgb = (rng.random((16, 12, 3)) * 255).astype(np.uint8)
    for fmt, suffix in [("PNG", ".png"), ("JPEG", ".jpg"), ("GIF", ".gif"), ("BMP", ".bmp"), ("TIFF", ".tif"),
                        ("WEBP", ".webp")]:
        path = folder / f"image{suffix}"
        Image.fromarray(rgb).save(path, format=fmt)
        seeds["image"].append((path, suffix))
    grey16 = (rng.random((16, 12)) * 4095).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "image16.png")
    seeds["image"].append((folder / "image16.png", ".png"))
    mask = (rng.random((16, 12)) > 0.5).astype(np.uint8) * 255
    for fmt, suffix in [("PNG", ".png"), ("GIF", ".gif"), ("JPEG", ".jpg")]:
        path = folder / f"mask{suffix}"
        Image.fromarray(mask).save(path, format=fmt)
        seeds["mask"].append((path, suffix))
    Image.fromarray((mask // 255).astype(np.uint16) * 3000).save(folder / "mask16.png")
    seeds["mask"].append((folder / "mask16.png", ".png"))
    volume = (rng.random((8, 6, 4)) * 1000 - 500).astype(np.int16)
    for suffix in (".nii", ".nii.gz"):
        path = write_nifti(folder / f"volume{suffix}", volume, np.diag([0.8, 0.8, 2.5, 1.0]))
        seeds["volume"].append((path, suffix))
    g = torch.Generator().manual_seed(0)
    tensors = {"cls_token": torch.randn(1, 1, 8, generator=g), "blocks.0.norm1.weight": torch.randn(8, generator=g),
               "blocks.0.attn.qkv.weight": torch.randn(24, 8, generator=g), "steps": torch.arange(6)}
    torch.save(tensors, folder / "zip.pth")
    torch.save({"state_dict": tensors, "epoch": 3}, folder / "legacy.pth", _use_new_zipfile_serialization=False)
    seeds["pth"] += [(folder / "zip.pth", ".pth"), (folder / "legacy.pth", ".pth")]
    save_file(tensors, str(folder / "backbone.safetensors"), metadata={"source": "test"})
    seeds["safetensors"].append((folder / "backbone.safetensors", ".safetensors"))
    torch.manual_seed(0)
    model = segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32))
    seeds["model"].append((segdino.save_model(model, folder / "model.safetensors"), ".safetensors"))
    weight_map = {k: "model-00001.safetensors" for k in tensors}
    (folder / "index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    seeds["index"].append((folder / "index.json", ".json"))
    (folder / "config.yaml").write_text("epochs: 3\nimage_size: 64\nbackbone: vitt16\nlr: 0.0001\n"
                                        "augment: [flip, rotate]\nseed: 7\n")
    seeds["yaml"].append((folder / "config.yaml", ".yaml"))
    (folder / "splits.json").write_text(json.dumps({"train": ["c0", "c1", "c2.png"], "val": ["c3"], "test": ["c4"]}))
    seeds["splits"].append((folder / "splits.json", ".json"))
    return seeds


# --- damage ---------------------------------------------------------------------------------------


def _header_span(data: bytes, suffix: str) -> int:
    """Bytes at the start that describe the rest: where damage matters most."""
    if suffix == ".safetensors" and len(data) > 8:
        return min(len(data), 8 + int.from_bytes(data[:8], "little"))
    return min(len(data), 512)


def damage(data: bytes, suffix: str, r: random.Random) -> tuple[bytes, str]:
    """One seeded damage of ``data``; returns the new bytes and what was done."""
    kinds = ["random", "truncate", "bitflip", "header", "magic+noise", "bitflip-anywhere"]
    kind = r.choice(kinds + ["deep"] if suffix in TEXT_SUFFIXES else kinds)
    if kind == "deep":  # valid syntax nested far beyond any recursion limit, somewhere inside
        depth = r.choice([100, 5_000, 200_000])
        at = r.randrange(len(data) + 1)
        return data[:at] + b"[" * depth + b"]" * depth + data[at:], kind
    b = bytearray(data)
    span = _header_span(data, suffix)
    if kind == "random":
        return bytes(r.getrandbits(8) for _ in range(r.randrange(0, 2048))), kind
    if kind == "truncate":
        return data[: r.randrange(0, len(data))], kind
    if kind == "magic+noise":
        return data[:16] + bytes(r.getrandbits(8) for _ in range(r.randrange(0, 1024))), kind
    if kind == "header":
        for _ in range(r.randint(1, 4)):
            b[r.randrange(span)] = r.choice([0x00, 0xFF, 0x7F, 0x80, 0x01, ord("9"), ord("{"), ord('"')])
        return bytes(b), kind
    limit = len(b) if kind == "bitflip-anywhere" else span
    for _ in range(r.randint(1, 8)):
        i = r.randrange(limit)
        b[i] ^= 1 << r.randrange(8)
    return bytes(b), kind


def make_cases(seeds: dict[str, list[tuple[Path, str]]], folder: Path, n: int, seed: int) -> list[dict]:
    """``n`` damaged files spread over the readers by :data:`SHARES`; deterministic for (n, seed)."""
    r = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(SHARES.values())
    plan = [reader for reader in READERS for _ in range(max(1, round(SHARES[reader] * n / total)))]
    cases = []
    for i, reader in enumerate(plan):
        source, suffix = r.choice(seeds[reader])
        data, how = damage(source.read_bytes(), suffix, r)
        path = folder / f"case{i:04d}_{reader}{suffix}"
        if reader == "index":  # an index is read from its folder, beside its shard
            path = folder / f"case{i:04d}_index" / "model.safetensors.index.json"
            path.parent.mkdir()
            (path.parent / "model-00001.safetensors").write_bytes((source.parent / "backbone.safetensors").read_bytes())
        path.write_bytes(data)
        entry = r.choice(["load_model", "read_state_dict", "backbone"]) if reader in ("pth", "safetensors") \
            else reader
        cases.append({"id": i, "reader": entry, "path": str(path), "source": source.name, "damage": how})
    return cases


# --- the worker: reads every case, one result line each ------------------------------------------------


def _readers():
    import segdino
    from segdino.data.imageio import read_image
    from segdino.data.layouts import Pair
    from segdino.data.masks import read_mask
    from segdino.data.splits import read_splits_file
    from segdino.train_config import resolve_config
    from segdino.volumes.io import read_volume
    from segdino.weights import load_backbone_weights, read_state_dict

    backbone = segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32)).backbone

    def image(p):
        out = read_image(p)
        assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8 and out.size, out.shape

    def mask(p):
        out = read_mask(p)
        assert out.ndim == 2 and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}, out.shape

    def volume(p):
        v = read_volume(p)
        assert v.array.ndim == 3 and v.affine.shape == (4, 4) and np.isfinite(v.affine).all()

    def state_dict(p):
        state = read_state_dict(p)
        assert state and all(hasattr(t, "shape") for t in state.values())

    def model(p):
        m = segdino.load_model(p)
        assert all(bool(t.isfinite().all()) for t in m.state_dict().values() if t.is_floating_point())

    def index(p):
        state = read_state_dict(Path(p).parent)
        assert state and all(hasattr(t, "shape") for t in state.values())

    def yaml_config(p):
        cfg = resolve_config({"data": "d", "out": "o"}, p)
        assert cfg.epochs >= 1

    pairs = [Pair(c, Path(f"{c}.png"), [Path(f"{c}_mask.png")], layout="plain") for c in SPLIT_CASES]

    def splits(p):
        out = read_splits_file(p, pairs)
        listed = [c for k in ("train", "val", "test") for c in out[k]]
        assert len(listed) == len(set(listed)) and set(listed) <= set(SPLIT_CASES)

    return {"image": image, "mask": mask, "volume": volume, "read_state_dict": state_dict, "load_model": model,
            "model": model, "backbone": lambda p: load_backbone_weights(backbone, p), "index": index,
            "yaml": yaml_config, "splits": splits}


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that no reader's ``except Exception`` swallows it."""


def worker(manifest: Path, results: Path) -> None:
    import logging
    import warnings

    import segdino

    logging.disable(logging.CRITICAL)  # nibabel reports header fixes through logging
    warnings.simplefilter("ignore")  # and Pillow warns about damaged metadata
    readers = _readers()
    cases = json.loads(manifest.read_text())

    def alarm(signum, frame):
        raise _Timeout()

    signal.signal(signal.SIGALRM, alarm)
    with open(results, "a", buffering=1) as out:
        for case in cases:
            out.write(json.dumps({"start": case["id"]}) + "\n")
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            signal.alarm(CASE_SECONDS)
            try:
                readers[case["reader"]](case["path"])
                status, detail = "ok", ""
            except segdino.SegDINOError as e:
                status, detail = "ours", str(e)[:300]
            except _Timeout:
                status, detail = "hang", f"over {CASE_SECONDS} s"
            except BaseException as e:  # anything else is what this test exists to find
                status, detail = "leak", f"{type(e).__name__}: {str(e)[:300]}"
            finally:
                signal.alarm(0)
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024  # MiB on Linux
            out.write(json.dumps({"id": case["id"], "status": status, "detail": detail, "grown_mib": grown,
                                  "seconds": round(time.perf_counter() - t0, 3)}) + "\n")


def run_worker(cases: list[dict], folder: Path) -> dict[int, dict]:
    """Run the cases in a fresh process; a stall or a crash becomes a result for the case it hit."""
    manifest, results = folder / "manifest.json", folder / "results.jsonl"
    manifest.write_text(json.dumps(cases))
    results.write_text("")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, __file__, str(manifest), str(results)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last_progress, seen = time.monotonic(), 0
    while proc.poll() is None:
        time.sleep(0.2)
        lines = results.read_text().splitlines()
        if len(lines) != seen:
            seen, last_progress = len(lines), time.monotonic()
        elif time.monotonic() - last_progress > (STALL_SECONDS if seen else STARTUP_SECONDS):
            proc.kill()
            break
    _, stderr = proc.communicate()
    done: dict[int, dict] = {}
    started = None
    for line in results.read_text().splitlines():
        rec = json.loads(line)
        if "start" in rec:
            started = rec["start"]
        else:
            done[rec["id"]] = rec
            started = None
    if started is not None:  # the case the worker was in when it died or stalled
        why = "stalled" if proc.returncode in (-signal.SIGKILL,) else f"crashed (exit {proc.returncode})"
        done[started] = {"id": started, "status": "crash", "detail": f"worker {why}: {stderr.decode()[-500:]}",
                         "grown_mib": 0, "seconds": 0}
    elif proc.returncode != 0:
        raise AssertionError(f"fuzz worker failed (exit {proc.returncode}): {stderr.decode()[-2000:]}")
    return done


# --- the test ---------------------------------------------------------------------------------------


def test_damaged_files_give_a_result_or_our_error(tmp_path):
    n = int(os.environ.get("SEGDINO_FUZZ_CASES", "200"))
    seed = int(os.environ.get("SEGDINO_FUZZ_SEED", "0"))
    seeds = make_seed_files(tmp_path / "valid")
    cases = make_cases(seeds, tmp_path / "cases", n, seed)
    assert len(cases) >= n - len(READERS)
    results = run_worker(cases, tmp_path)

    missing = [c["id"] for c in cases if c["id"] not in results]
    bad = []
    for c in cases:
        res = results.get(c["id"])
        if res is None:
            continue
        if res["status"] not in ("ok", "ours") or res["grown_mib"] > MAX_GROWTH_MIB:
            bad.append(f"{c['path']} ({c['reader']}, {c['damage']} of {c['source']}): {res['status']} "
                       f"{res['detail']} [{res['grown_mib']} MiB, {res['seconds']} s]")
    assert not bad and not missing, "\n".join(bad) + (f"\nnever ran: {missing[:20]}" if missing else "")

    statuses = [results[c["id"]]["status"] for c in cases]
    # The damage is real: most files are refused, and every reader saw both outcomes' worth of cases.
    assert statuses.count("ours") > len(cases) // 2
    by_reader = {c["reader"] for c in cases}
    assert {"image", "mask", "volume", "model", "load_model", "read_state_dict", "backbone", "index", "yaml",
            "splits"} <= by_reader


def test_damage_is_deterministic(tmp_path):
    data = bytes(range(256)) * 8
    assert damage(data, ".png", random.Random(3)) == damage(data, ".png", random.Random(3))
    outcomes = [damage(data, ".png", random.Random(s)) for s in range(60)]
    assert {how for _, how in outcomes} == {"random", "truncate", "bitflip", "header", "magic+noise",
                                            "bitflip-anywhere"}
    assert sum(out != data for out, _ in outcomes) >= 55


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
