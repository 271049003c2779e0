"""The user's first five minutes: the whole demo pipeline through Snakemake on 2 CPU cores."""

from __future__ import annotations

import base64
import collections
import contextlib
import csv
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.results_helpers import check_model_index
from tests.workflow_helpers import NO_SLURM, OTHER_VERSION, REPO, DemoRun, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def test_demo_results_table(demo_run: DemoRun) -> None:
    import pandas as pd

    wf, seconds = demo_run.wf, demo_run.seconds
    print(f"demo pipeline wall time: {seconds:.0f} s")
    df = pd.read_csv(wf / "results/demo/model_zoo.csv").set_index("model")
    assert set(df.index) == {"demo_vit", "demo_tokshift"}
    for col in ("top1", "top5", "top1_softmax", "top1_1view", "top1_3view", "mean_class_acc"):
        assert df[col].between(0, 100).all(), col
    assert (df["params_m"] > 0).all() and (df["gflops_per_view"] > 0).all()
    assert (df["views"] == 30).all()
    assert (df["val_failed"] == 0).all() and (df["val_videos"] > 0).all()
    margin = df.loc["demo_tokshift", "top1"] - df.loc["demo_vit", "top1"]
    print(f"30-view top-1: tokshift {df.loc['demo_tokshift', 'top1']:.2f}, vit {df.loc['demo_vit', 'top1']:.2f}")
    assert margin >= 15, f"TokShift beats ViT by only {margin:.1f} points"
    for model in df.index:
        assert (wf / df.loc[model, "checkpoint"]).exists() or Path(df.loc[model, "checkpoint"]).exists()
    assert (wf / "results/demo/model_zoo.md").read_text().count("demo_") >= 2
    assert (wf / "results/demo/accuracy_vs_gflops.png").stat().st_size > 1000
    # The model index beside the table says what the CSV says, and names files the run wrote.
    index = check_model_index(wf / "results/demo/model-index.yml", wf / "results/demo/model_zoo.csv", "demo")
    for entry in index["Models"]:
        assert (wf / entry["Weights"]).is_file() and (wf / entry["Training Log"]).is_file(), entry["Name"]
    for rule in ("demo_videos", "index_dataset", "pack_shard", "train", "evaluate", "collect_results"):
        assert any((wf / "logs" / rule).rglob("*.log")), f"no log for {rule}"


def _git(where: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, check=check)


#: A job's first log line (tokshift.provenance.header_lines): version, package folder, commit.
_CODE_LINE = re.compile(r"^tokshift (?P<version>\S+) from (?P<package>.+) \((?P<code>.+)\)$")


def test_every_job_ran_the_checkout_code_not_the_installed_one(demo_run: DemoRun) -> None:
    """Snakemake ran from a venv whose own `tokshift` is another copy (another version, and its CLI
    exits 9 saying "wrong tokshift copy"): the rules' former `tokshift ...` would have run it. Every
    job ran the workflow's own package instead, and its log's first line names it with its commit."""
    from tokshift import __version__

    wf, venv = demo_run.wf, demo_run.venv
    assert venv is not None
    installed = subprocess.run([venv / "bin" / "tokshift", "--version"], capture_output=True, text=True, check=True)
    assert installed.stdout.strip() == f"tokshift {OTHER_VERSION}"
    assert (wf / "results/demo/model_zoo.csv").is_file()  # the run succeeded (the other copy fails every job)

    # The run's checkout is this one's commit (or one before it, if this checkout moved on since).
    commit = _git(wf, "rev-parse", "HEAD").stdout.strip()
    assert _git(REPO, "merge-base", "--is-ancestor", commit, "HEAD", check=False).returncode == 0
    status = _git(wf, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    dirty = any(line[3:] != "config.yaml" for line in status)

    expected = f"commit {commit}"
    package = str(wf.resolve() / "tokshift")
    logs = sorted(p for p in (wf / "logs").rglob("*.log") if not p.name.endswith(".attempts.log"))
    assert len(logs) >= 10, logs  # demo, index, pack, summarize, train, evaluate, collect, figures
    wrong = []
    for log in logs:
        text = log.read_text(errors="replace")
        first = _CODE_LINE.match(text.split("\n", 1)[0])
        name = log.relative_to(wf)
        if OTHER_VERSION in text or "wrong tokshift copy" in text:
            wrong.append(f"{name}: ran the installed copy")
        elif first is None:
            wrong.append(f"{name}: first line is not the code line: {text[:200]!r}")
        elif (first["version"], first["package"]) != (__version__, package):
            wrong.append(f"{name}: ran {first['version']} from {first['package']}")
        elif not (first["code"].startswith(f"{expected}, modified: ") if dirty else first["code"] == expected):
            wrong.append(f"{name}: code {first['code']!r}, expected commit {commit} (modified: {dirty})")
    assert not wrong, "\n".join(wrong)


def test_every_output_records_the_code_software_and_machine_that_made_it(demo_run: DemoRun) -> None:
    """model.pt, train_summary.json, metrics.json, the shards' seals, the sources and the table carry the
    provenance of the run's own checkout (a copy of this one: same commit, modified where this one is)."""
    import platform
    import socket
    from importlib import metadata

    import pandas as pd
    import torch

    from tokshift import provenance

    wf = demo_run.wf
    commit = _git(wf, "rev-parse", "HEAD").stdout.strip()
    modified = [line[3:] for line in _git(wf, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()]
    dirty = any(m != "config.yaml" for m in modified)
    here = [line[3:] for line in _git(REPO, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()]
    assert dirty == any(m != "config.yaml" for m in here), (modified, here)  # the copy is modified where we are

    def check(block: dict, command: str) -> None:
        code, sw = block["tokshift"], block["software"]
        assert (code["package"], code["commit"], code["dirty"]) == (str(wf.resolve() / "tokshift"), commit, dirty)
        assert sw["python"] == platform.python_version() and sw["torch"] == metadata.version("torch")
        assert sw["timm"] == metadata.version("timm")
        assert block["host"] == socket.gethostname() and block["slurm"] is None
        assert block["command"] == command and block["started"] <= block["ended"]

    table = pd.read_csv(wf / "results/demo/model_zoo.csv").set_index("model")
    sources = json.loads((wf / "results/demo/model_zoo.sources.json").read_text())
    check(sources["provenance"], "collect")
    for model in table.index:
        summary = json.loads((wf / f"results/demo/train/{model}/train_summary.json").read_text())
        ckpt = torch.load(wf / f"results/demo/train/{model}/model.pt", map_location="cpu", weights_only=True)
        metrics = json.loads((wf / f"results/demo/eval/{model}/metrics.json").read_text())
        assert ckpt["provenance"] == summary["provenance"] == sources["models"][model]["train_provenance"]
        assert metrics["provenance"] == sources["models"][model]["eval_provenance"]
        check(summary["provenance"], "train")
        check(metrics["provenance"], "evaluate")
        assert summary["provenance"]["software"]["torch_loaded"] == str(torch.__version__)
        assert summary["provenance"]["devices"] == [f"cpu ({provenance.cpu_model()})"] * summary["world_size"]
        (attempt,) = summary["provenance"]["attempts"]
        assert attempt["last_step"] == summary["optimizer_steps"]
        row = table.loc[model]
        short = commit[:12] + ("+dirty" if dirty else "")
        assert (row["train_commit"], row["eval_commit"]) == (short, short)
        assert row["train_torch"] == row["eval_torch"] == metadata.version("torch")
        assert row["trained_on"] == provenance.devices_summary(summary["provenance"]["devices"])
    for seal in sorted((wf / "results/demo/frames").glob("*/shard-*.lmdb.seal.json")):
        check(json.loads(seal.read_text())["provenance"], "pack")


def test_second_run_is_a_no_op(demo_run: DemoRun) -> None:
    wf = demo_run.wf
    out = snakemake(wf, "-n", "--cores", "2", check=True).stdout
    assert planned_jobs(out) == {}, out[-3000:]


def test_every_output_is_group_readable(demo_run: DemoRun) -> None:
    """Under umask 022 (set by the fixture) everything the workflow wrote is 0644 and every folder
    0755, so a group shares a project's models, shards and logs. `.snakemake/` is Snakemake's own
    bookkeeping and is not walked; links are skipped (their mode means nothing); shards are opened
    without LMDB lock files, so there are none to skip."""
    wf = demo_run.wf
    roots = [wf / name for name in ("results", "resources", "logs", "benchmarks")]
    assert all(root.is_dir() for root in roots), [str(r) for r in roots if not r.is_dir()]
    wrong, walked = [], 0
    for root in roots:
        for path in [root, *root.rglob("*")]:
            if path.is_symlink():
                continue
            mode = path.stat().st_mode & 0o7777
            expected = 0o755 if path.is_dir() else 0o644
            walked += 1
            if mode != expected:
                wrong.append(f"{path.relative_to(wf)}: {mode:04o} (expected {expected:04o})")
    assert walked > 50, walked  # models, shards, videos, logs, benchmarks, figures
    assert not wrong, f"{len(wrong)} of {walked} paths have the wrong mode:\n" + "\n".join(wrong)


def test_moved_copy_of_the_finished_project_plans_nothing(demo_run: DemoRun, tmp_path: Path) -> None:
    """`cp -a project elsewhere`: the results stay valid there (no job recorded the old path)."""
    wf = demo_run.wf
    moved = tmp_path / "moved" / "project"
    shutil.copytree(wf, moved, symlinks=True)  # keeps modification times, as cp -a
    out = snakemake(moved, "-n", "--cores", "2", check=True).stdout
    assert planned_jobs(out) == {}, out[-3000:]


# timm's names -> the original's (ViT-pytorch under the video wrapper and DDP): the inverse of
# tokshift.checkpoints.original_state_dict, written out here so the test does not use it.
_TO_ORIGINAL = [
    (r"^patch_embed\.proj\.", "transformer.embeddings.patch_embeddings."),
    (r"^pos_embed$", "transformer.embeddings.position_embeddings"),
    (r"^cls_token$", "transformer.embeddings.cls_token"),
    (r"^norm\.", "transformer.encoder.encoder_norm."),
    (r"^blocks\.(\d+)\.norm1\.", r"transformer.encoder.layer.\1.attention_norm."),
    (r"^blocks\.(\d+)\.norm2\.", r"transformer.encoder.layer.\1.ffn_norm."),
    (r"^blocks\.(\d+)\.mlp\.", r"transformer.encoder.layer.\1.ffn."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"transformer.encoder.layer.\1.attn.out."),
    (r"^head\.", "head."),
]


def export_original(model_pt: Path, out: Path) -> Path:
    """A trained model.pt saved as the original's rank 0 saves a checkpoint (q/k/v apart, prefixed keys)."""
    import torch

    trained = torch.load(model_pt, map_location="cpu", weights_only=True)
    state: dict[str, torch.Tensor] = {}
    for key, value in trained["model"].items():
        qkv = re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key)
        if qkv:
            layer, param = qkv.groups()
            for name, part in zip(("query", "key", "value"), value.chunk(3)):
                state[f"transformer.encoder.layer.{layer}.attn.{name}.{param}"] = part.clone()
            continue
        for pattern, repl in _TO_ORIGINAL:
            new, n = re.subn(pattern, repl, key)
            if n:
                state[new] = value
                break
        else:
            raise AssertionError(f"no original name for {key}")
    params = [torch.nn.Parameter(v.float()) for v in state.values()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10, 15])
    ckpt = {
        "epoch": 7,
        "state_dict": {f"module.base_model.{k}": v for k, v in state.items()},
        "best_acc1": torch.tensor(50.0),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
    }
    torch.save(ckpt, out)
    return out


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Files of `root` over HTTP on the loopback interface; yields the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_released_checkpoints_reproduce_the_trained_top1(demo_run: DemoRun, tmp_path: Path) -> None:
    """The trained demo models, exported in the original's layout and served as `released:` URLs,
    evaluate to exactly the trained models' 30-view accuracy, and nothing is trained."""
    import pandas as pd
    import torch

    from tokshift.fileio import sha256_file

    wf = demo_run.wf
    project = tmp_path / "project"
    shutil.copytree(wf, project, symlinks=True)
    models = ("demo_vit", "demo_tokshift")
    trained_outputs = [project / "results/demo/model_zoo.csv"]
    trained_outputs += [project / f"results/demo/train/{m}/model.pt" for m in models]
    trained_outputs += [project / f"results/demo/eval/{m}/metrics.json" for m in models]
    before = {p: sha256_file(p) for p in trained_outputs}
    train_logs = {p: p.stat().st_mtime_ns for p in (project / "logs/train").rglob("*.log")}
    assert train_logs
    served = tmp_path / "served"
    served.mkdir()
    pth = {m: export_original(project / f"results/demo/train/{m}/model.pt", served / f"{m}.pth") for m in models}
    env = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    with serve_directory(served) as url:
        released = {m: {"source": f"{url}/{m}.pth", "sha256": sha256_file(pth[m])} for m in models}
        # The trained models were evaluated in the fast mode (linear resize): evaluate the same way.
        fast = {"resize": "linear", "faithful": False}
        (project / "released.yaml").write_text(yaml.safe_dump({"evaluate": fast, "released": released}))
        args = ("--cores", "2", "--configfile", "released.yaml", "--config", "checkpoints=released")
        plan = planned_jobs(snakemake(project, "-n", *args, check=True, env=env).stdout)
        assert plan == {
            "fetch_released": 2,
            "import_released": 2,
            "evaluate_released": 2,
            "collect_released": 1,
            "all": 1,
        }, plan
        run = snakemake(project, *args, check=True, env=env)
        ran = planned_jobs(run.stdout + "\n" + run.stderr)
        assert "train" not in ran and "download_weights" not in ran and ran.get("evaluate_released") == 2, ran
        assert planned_jobs(snakemake(project, "-n", *args, check=True, env=env).stdout) == {}
    assert {p: sha256_file(p) for p in trained_outputs} == before
    assert {p: p.stat().st_mtime_ns for p in (project / "logs/train").rglob("*.log")} == train_logs
    trained = pd.read_csv(project / "results/demo/model_zoo.csv").set_index("model")
    table = pd.read_csv(project / "results/demo/released/model_zoo.csv").set_index("model")
    assert set(table.index) == set(models)
    for m in models:
        ours = json.loads((project / f"results/demo/eval/{m}/metrics.json").read_text())
        theirs = json.loads((project / f"results/demo/released/eval/{m}/metrics.json").read_text())
        for key in ("top1", "top5", "top1_softmax", "top1_1view", "top1_3view", "videos", "views"):
            assert theirs[key] == ours[key], (m, key, theirs[key], ours[key])
        assert table.loc[m, "top1"] == trained.loc[m, "top1"]
        assert table.loc[m, "checkpoint_source"] == released[m]["source"]
        assert table.loc[m, "checkpoint"] == f"results/demo/released/{m}/model.pt"
        assert table.loc[m, "epochs"] == 7
        assert trained.loc[m, "checkpoint_source"] == "trained"
        converted = torch.load(project / table.loc[m, "checkpoint"], map_location="cpu", weights_only=True)
        assert converted["source_sha256"] == released[m]["sha256"]
        assert theirs["suspect_class_swaps"] == [], (m, theirs["suspect_class_swaps"])
    assert (project / "results/demo/released/model_zoo.md").read_text().count("http://127.0.0.1") == 2
    assert (project / "results/demo/released/accuracy_vs_gflops.png").stat().st_size > 1000
    released_index = project / "results/demo/released/model-index.yml"
    index = check_model_index(released_index, project / "results/demo/released/model_zoo.csv", "demo", released=True)
    assert {m["Name"]: m["Weights"] for m in index["Models"]} == {m: released[m]["source"] for m in models}
    for rule in ("fetch_released", "import_released", "evaluate_released", "collect_released"):
        assert any((project / "logs" / rule).rglob("*.log")), f"no log for {rule}"
        assert any((project / "benchmarks" / rule).rglob("*.tsv")), f"no benchmark for {rule}"


def test_a_released_checkpoint_in_another_class_order_is_named(demo_run: DemoRun, tmp_path: Path) -> None:
    """The served checkpoint's head rows of two classes exchanged, as a checkpoint trained with another
    class order has them: its released evaluation names both classes, in its log and metrics.json."""
    import torch

    project = tmp_path / "project"
    shutil.copytree(demo_run.wf, project, symlinks=True)
    model = "demo_tokshift"
    classes = (project / "results/demo/index/val.classes.txt").read_text().split("\n")[:2]
    served = tmp_path / "served"
    served.mkdir()
    pth = export_original(project / f"results/demo/train/{model}/model.pt", served / f"{model}.pth")
    ckpt = torch.load(pth, map_location="cpu", weights_only=False)
    for key in ("module.base_model.head.weight", "module.base_model.head.bias"):
        ckpt["state_dict"][key] = ckpt["state_dict"][key][[1, 0, *range(2, len(ckpt["state_dict"][key]))]]
    torch.save(ckpt, pth)
    env = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    with serve_directory(served) as url:
        released = {model: {"source": f"{url}/{model}.pth", "sha256": None}}
        config = {"evaluate": {"resize": "linear", "faithful": False}, "released": released, "models": [model]}
        (project / "released.yaml").write_text(yaml.safe_dump(config))
        snakemake(
            project,
            "--cores",
            "2",
            "--configfile",
            "released.yaml",
            "--config",
            "checkpoints=released",
            check=True,
            env=env,
        )
    log = (project / f"logs/evaluate_released/demo/{model}.log").read_text()
    warning = next(line for line in log.splitlines() if "CLASS ORDER?" in line)
    assert f"{classes[0]!r} and {classes[1]!r}" in warning, warning
    metrics = json.loads((project / f"results/demo/released/eval/{model}/metrics.json").read_text())
    assert [pair[:2] for pair in metrics["suspect_class_swaps"]] == [classes], metrics["suspect_class_swaps"]


def test_damaged_val_shard_fails_evaluation_by_name_and_keeps_the_models(demo_run: DemoRun, tmp_path: Path) -> None:
    """A truncated val shard: no retraining, evaluation stops naming the shard, model.pt untouched."""
    from tokshift.fileio import sha256_file

    wf = demo_run.wf
    project = tmp_path / "project"
    shutil.copytree(wf, project, symlinks=True)
    models = {m: project / f"results/demo/train/{m}/model.pt" for m in ("demo_vit", "demo_tokshift")}
    before = {m: sha256_file(p) for m, p in models.items()}
    shard = project / "results/demo/frames/val/shard-0.lmdb"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    plan = snakemake(project, "-n", "--cores", "2", check=True).stdout
    assert "train" not in planned_jobs(plan) and planned_jobs(plan).get("evaluate") == 2, plan[-3000:]
    run = snakemake(project, "--cores", "2", "--keep-going")  # every evaluation runs and fails on its own
    assert run.returncode != 0
    for model in models:
        log = (project / f"logs/evaluate/demo/{model}.log").read_text()
        assert "shard-0.lmdb" in log and "re-pack" in log.lower() and "Bus error" not in log, log[-3000:]
    assert {m: sha256_file(p) for m, p in models.items()} == before


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_explain_shows_tokshift_needs_its_shift(demo_run: DemoRun) -> None:
    """Switched off, TokShift's shift no longer tells the direction of change: its predictions change
    and fall to a per-frame ViT's guessing within each pair; the figures have a panel per frame."""
    import numpy as np

    from tokshift.notebook import load
    from tokshift.viz.explain import explain_shard_videos
    from tokshift.viz.explain_figure import FRAME_GID, render_explanation

    wf = demo_run.wf
    shards = sorted((wf / "results/demo/frames/val").glob("shard-*.lmdb"))
    ids = [f"videos/val/{c}_{i:04d}.mp4" for c in ("brighten", "darken", "disc_grow", "disc_shrink") for i in range(3)]
    tokshift = explain_shard_videos(load(wf / "results/demo/train/demo_tokshift/model.pt", device="cpu"), shards, ids)
    vit = explain_shard_videos(load(wf / "results/demo/train/demo_vit/model.pt", device="cpu"), shards, ids[:1])
    on = sum(e.shift_on.predicted == e.classes.index(e.label) for e in tokshift)
    off = sum(e.shift_off.predicted == e.classes.index(e.label) for e in tokshift)
    changed = sum(e.shift_on.predicted != e.shift_off.predicted for e in tokshift)
    print(f"TokShift on 12 val videos: {on} right with the shift, {off} without; {changed} predictions changed")
    assert on >= 10 and off <= on - 3 and changed >= 3
    for e in tokshift:  # the video logit is the mean of the per-frame logits, in both passes
        for p in e.passes:
            np.testing.assert_allclose(p.frame_logits.mean(axis=0), p.logits, rtol=1e-6)
    assert vit[0].shift_off is None
    for e, panels in ((tokshift[0], 16), (vit[0], 8)):
        assert sum(ax.get_gid() == FRAME_GID for ax in render_explanation(e).axes) == panels
    # The workflow's explain figures: one per role; two rows for TokShift, one for the ViT, and a
    # short placeholder where no video fits the role (TokShift may make no error).
    explained = wf / "results/demo/figures/explain"
    roles = ["correct_most_confident", "correct_least_confident", "error_1", "error_2"]
    vit_height = _png_size(explained / "demo_vit/correct_most_confident.png")[1]
    log = (wf / "logs/explain_examples/demo/demo_tokshift.log").read_text()
    assert "shift off:" in log, log
    assert "no video" not in (wf / "logs/explain_examples/demo/demo_vit.log").read_text()  # it errs often
    for role in roles:
        assert abs(_png_size(explained / f"demo_vit/{role}.png")[1] - vit_height) < 0.1 * vit_height
        height = _png_size(explained / f"demo_tokshift/{role}.png")[1]
        placeholder = f"no video for {role}" in log
        assert (height < vit_height / 2) if placeholder else (height > 1.4 * vit_height), (role, height)
    assert "no video for correct" not in log


def test_per_class_csv_is_recomputed_from_predictions(demo_run: DemoRun) -> None:
    import pandas as pd

    wf = demo_run.wf
    for model in ("demo_vit", "demo_tokshift"):
        with open(wf / f"results/demo/eval/{model}/predictions.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if not r["error"]]
        table = pd.read_csv(wf / f"results/demo/eval/{model}/per_class.csv", keep_default_na=False)
        assert table["class"].tolist() == ["brighten", "darken", "disc_grow", "disc_shrink"]
        for r in table.to_dict(orient="records"):
            mine = [x for x in rows if x["label"] == r["class"]]
            wrong = collections.Counter(x["pred1"] for x in mine if x["pred1"] != r["class"])
            assert r["videos"] == len(mine) == 32
            assert r["top1"] == pytest.approx(100 * sum(x["pred1"] == r["class"] for x in mine) / len(mine))
            top5 = sum(r["class"] in [x[f"pred{k}"] for k in range(1, 6)] for x in mine)
            assert r["top5"] == pytest.approx(100 * top5 / len(mine))
            most = max(wrong.values(), default=0)
            assert r["confused_count"] == most
            assert (
                (r["confused_with"] in {c for c, n in wrong.items() if n == most}) if most else r["confused_with"] == ""
            )
        metrics = json.loads((wf / f"results/demo/eval/{model}/metrics.json").read_text())
        assert table["top1"].mean() == pytest.approx(metrics["mean_class_acc"], abs=1e-3)
        _png_size(wf / f"results/demo/figures/confusions/{model}.png")
    for name in ("curves/demo_vit", "curves/demo_tokshift", "training_compared"):
        _png_size(wf / f"results/demo/figures/{name}.png")
    for rule in ("per_class", "training_curves", "explain_examples"):
        assert any((wf / "logs" / rule).rglob("*.log")), f"no log for {rule}"
        assert any((wf / "benchmarks" / rule).rglob("*.tsv")), f"no benchmark for {rule}"


def test_report_holds_every_figure(demo_run: DemoRun, tmp_path: Path) -> None:
    """`snakemake --report`: the table, the plot, the per-class results, the curves and the explain
    figures are all embedded (each file's bytes, base64) in the self-contained HTML."""
    wf = demo_run.wf
    snakemake(wf, "--report", str(tmp_path / "report.html"), check=True, timeout=600)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    results = wf / "results/demo"
    expected = [
        results / "model_zoo.csv",
        results / "accuracy_vs_gflops.png",
        results / "figures/training_compared.png",
    ]
    for model in ("demo_vit", "demo_tokshift"):
        expected += [results / f"eval/{model}/per_class.csv", results / f"figures/confusions/{model}.png"]
        expected += [results / f"figures/curves/{model}.png"]
        expected += sorted((results / f"figures/explain/{model}").glob("*.png"))
    assert len(expected) >= 14
    for path in expected:
        assert base64.b64encode(path.read_bytes()).decode() in html, f"{path} is not in report.html"
    for caption in ("attention rollout", "Training curves of each model", "mistaken for", "mixes up"):
        assert caption in html, caption


def test_deleting_one_checkpoint_reruns_only_that_model(demo_run: DemoRun, tmp_path: Path) -> None:
    wf = tmp_path / "project"
    shutil.copytree(demo_run.wf, wf, symlinks=True)
    (wf / "results/demo/train/demo_vit/model.pt").unlink()
    out = snakemake(wf, "-n", "--cores", "2", check=True).stdout
    assert planned_jobs(out) == {
        "train": 1,
        "evaluate": 1,
        "collect_results": 1,
        "per_class": 1,
        "training_curves": 1,
        "explain_examples": 1,
        "all": 1,
    }, out[-3000:]
    assert "model=demo_vit" in out and "model=demo_tokshift" not in out


def _wait_until(predicate, what: str, limit: float = 600) -> None:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < limit, f"no {what} within {limit:.0f} s"
        time.sleep(0.2)


def test_a_refused_rerun_keeps_the_orphaned_trainings_log(demo_run: DemoRun, tmp_path: Path) -> None:
    """`kill -9` of Snakemake mid-training, `--unlock` and a rerun while the orphan still trains.

    The rerun's train job is refused by the folder lock; Snakemake has already recreated the rule's
    log, but the model's own log (train.log in its folder) and the attempts log keep the whole
    training of the model that is finally kept, and the refused job names where that log is.
    """
    wf = tmp_path / "project"
    shutil.copytree(demo_run.wf, wf, symlinks=True)
    folder = wf / "results/demo/train/demo_tokshift"
    folder_log, rule_log = folder / "train.log", wf / "logs/train/demo/demo_tokshift.log"
    attempts_log = wf / "logs/train/demo/demo_tokshift.attempts.log"
    before = folder_log.read_text()  # the demo run's own attempt
    assert before.count(" tokshift train attempt starts ") == 1 and "attempt ends: exit 0 OK" in before
    # A retrain long enough to be killed in (a changed recipe: Snakemake plans it itself).
    target = [
        "--config",
        "train={per_model: {demo_tokshift: {epochs: 12}}}",
        "--",
        "results/demo/train/demo_tokshift/model.pt",
    ]
    with (tmp_path / "first.out").open("w") as sink:
        first = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "--cores", "2", *target],
            cwd=wf,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **NO_SLURM},
        )
    _wait_until(lambda: "epoch 1/12: train loss" in folder_log.read_text(), "first epoch")
    first.send_signal(signal.SIGKILL)  # Snakemake dies; its training goes on as an orphan
    first.wait()
    orphan = json.loads((folder / ".tokshift.lock").read_text())["pid"]
    snakemake(wf, "--unlock", check=True)
    refused = snakemake(wf, "--cores", "2", "--rerun-incomplete", *target)
    assert refused.returncode != 0
    assert "exit 75" in attempts_log.read_text().split(" starts ")[-1]  # the last attempt: refused, RETRY_LATER
    assert "Its log: results/demo/train/demo_tokshift/train.log" in rule_log.read_text()
    _wait_until(lambda: not Path(f"/proc/{orphan}").exists(), "end of the orphaned training")

    log = folder_log.read_text()
    assert log.startswith(before)
    kept = log[len(before) :]
    assert kept.count(" attempt starts ") == 1, kept[-3000:]  # the refused run wrote nothing here
    epochs = re.findall(r"epoch (\d+)/12: train loss", kept)
    assert epochs == [str(e) for e in range(1, 13)], epochs
    assert re.search(r"attempt ends: exit 0 OK after [\d.]+ s$", kept.rstrip()), kept[-500:]
    # The attempts log holds the same training: every record of the orphan's attempt.
    records = [line.split(" INFO ", 1)[1] for line in kept.splitlines() if " INFO tokshift.engine.train" in line]
    recorded = attempts_log.read_text()
    assert records and all(r in recorded for r in records)
    # The kept model is the orphan's: its sha256 is the one its log names.
    digest = re.findall(r"wrote \S*model\.pt \(sha256 (\w+)", kept)[-1]
    assert hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest().startswith(digest)
    # Snakemake still marks it incomplete (its job was killed); README's recipe keeps it without a retrain.
    outputs = [
        f"results/demo/train/demo_tokshift/{name}" for name in ("model.pt", "metrics.jsonl", "train_summary.json")
    ]
    snakemake(wf, "--cleanup-metadata", *outputs, check=True)
    plan = snakemake(wf, "-n", "--cores", "2", *target[:2], check=True).stdout
    assert "train" not in planned_jobs(plan) and planned_jobs(plan)["evaluate"] == 1, plan[-3000:]


def test_preflight_projects_the_demo_training_it_ran(demo_run: DemoRun, tmp_path: Path) -> None:
    """`snakemake preflight` in the finished demo (its shards and index exist) projects each model's
    training time from a few timed steps; the real training of the same models on this machine took
    within 1.5x of that (docs/preflight.md)."""
    wf = tmp_path / "project"
    shutil.copytree(demo_run.wf, wf, symlinks=True)
    snakemake(wf, "--cores", "2", "preflight", check=True)
    report = json.loads((wf / "results/demo/preflight.json").read_text())
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    assert "counted in results/demo/index" in report["measured_on"]
    names = {c["name"] for c in report["checks"]}
    assert {"train demo_tokshift: shard_read", "evaluate demo_vit: shard_read"} <= names  # the real shards, read
    for price in report["prices"]:
        measured = json.loads((wf / "results/demo/train" / price["model"] / "train_summary.json").read_text())
        ratio = price["train_hours"] / measured["train_hours"]
        seconds = price["train_hours"] * 3600, measured["train_hours"] * 3600
        print(f"{price['model']}: projected {seconds[0]:.1f} s, trained {seconds[1]:.1f} s, ratio {ratio:.2f}")
        assert 1 / 1.5 <= ratio <= 1.5, (price, measured["train_hours"])
    # With the preflight on record the table shows each projection beside what training measured.
    plan = snakemake(wf, "-n", "--cores", "2", check=True).stdout
    assert planned_jobs(plan) == {"collect_results": 1, "all": 1}, plan[-3000:]
    snakemake(wf, "--cores", "2", check=True)
    with (wf / "results/demo/model_zoo.csv").open() as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    sources = json.loads((wf / "results/demo/model_zoo.sources.json").read_text())
    for price in report["prices"]:
        row = rows[price["model"]]
        assert float(row["projected_train_hours"]) == round(price["train_hours"], 3)
        assert float(row["train_gpu_hours"]) == 0.0 and float(row["projected_train_gpu_hours"]) == 0.0  # CPU jobs
        assert sources["models"][price["model"]]["preflight"] == "results/demo/preflight.json"
