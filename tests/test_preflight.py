"""The preflight's parts on this machine: real probes of the demo models, the cluster checks, the price."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.engine_helpers import PackedDemo, cli_env, run_cli_inprocess, tokshift_cmd
from tests.workflow_helpers import repo_config
from tokshift.preflight import cluster
from tokshift.preflight.price import price_model
from tokshift.preflight.report import duration
from tokshift.workflow.scheduling import preflight_jobs
from tokshift.zoo import get_config


@pytest.fixture(scope="module")
def probes(packed_demo: PackedDemo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A train and an evaluate probe of the demo TokShift on the packed demo shards (stage_to: a tmp folder)."""
    root = tmp_path_factory.mktemp("preflight")
    out = {}
    for step, shards in (("train", packed_demo.train), ("evaluate", packed_demo.val)):
        out[step] = root / f"{step}.json"
        res = run_cli_inprocess(
            "preflight-probe",
            "--model",
            "demo_tokshift",
            "--step",
            step,
            "--out",
            str(out[step]),
            "--shards",
            str(shards),
            "--stage-to",
            str(root),
            "--workers",
            "0",
            "--steps",
            "2",
            "--override",
            "batch_size=4",
            threads=2,
        )
        assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_probes_measure_the_configured_shape_and_read_the_shards(probes: dict[str, Path]) -> None:
    train, evaluate = (json.loads(probes[s].read_text()) for s in ("train", "evaluate"))
    assert [c["name"] for c in train["checks"]] == ["device", "all_reduce", "train_step", "shard_read", "stage_to"]
    assert all(c["ok"] for c in train["checks"] + evaluate["checks"]), train["checks"] + evaluate["checks"]
    m = train["measured"]
    assert (m["batch_size"], m["accum_steps"], m["world_size"], m["amp"]) == (4, 1, 1, "off")  # --override reached it
    assert m["step_seconds"] > 0 and m["peak_memory_bytes"] > 0 and m["device_memory_bytes"] is None  # CPU
    assert m["loader_items_per_second"] > 0 and m["shard_bytes"] > 0 and m["stage_to_free_bytes"] > m["shard_bytes"]
    assert "evaluate_batch" in [c["name"] for c in evaluate["checks"]]
    assert evaluate["measured"]["video_seconds"] > 0 and evaluate["measured"]["views"] == 30
    assert train["provenance"]["command"] == "preflight-probe"


def test_gpus_cuda_cannot_use_are_a_failed_check_not_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    command = tokshift_cmd("preflight-probe", "--model", "demo_tokshift", "--step", "train", "--device", "cuda")
    env = {**cli_env(), "CUDA_VISIBLE_DEVICES": ""}  # no GPU CUDA can use, on any machine
    res = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    checks = json.loads(out.read_text())["checks"]
    assert [(c["name"], c["ok"]) for c in checks] == [("cuda", False)]
    assert checks[0]["detail"] and checks[0]["fix"]


def test_report_prices_each_model_and_the_zoo(probes: dict[str, Path], tmp_path: Path) -> None:
    jobs = preflight_jobs(repo_config_validated(), ["demo_tokshift"])
    res = run_cli_inprocess(
        "preflight-report", "--executor", "local", "--dataset", "demo", "--jobs", json.dumps(jobs),
        "--probes", str(probes["train"]), str(probes["evaluate"]), "--index-dir", str(tmp_path / "no-index"),
        "--json", str(tmp_path / "preflight.json"), "--md", str(tmp_path / "preflight.md"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "preflight.json").read_text())
    (price,) = report["prices"]
    m = json.loads(probes["train"].read_text())["measured"]
    assert (
        price["model"] == "demo_tokshift" and price["steps"] == math.ceil(512 / 4) * get_config("demo_tokshift").epochs
    )
    assert price["train_hours"] >= price["steps"] * m["step_seconds"] / 3600
    assert report["total"]["train_hours"] == price["train_hours"] and price["evaluate_hours"] > 0
    md = (tmp_path / "preflight.md").read_text()
    assert "| demo_tokshift | 0 | 4 |" in md and "**Zoo total:**" in md and "the demo generator's sizes" in md


def repo_config_validated() -> dict:
    from snakemake.utils import validate

    from tokshift.settings import SCHEMA_PATH

    cfg = repo_config()
    validate(cfg, str(SCHEMA_PATH))
    return cfg


PARTITIONS = {
    "gpu": cluster.Partition("gpu", 2880.0, ("gpu:a100:4(S:0-1)",), ("a100", "ib")),
    "cpu": cluster.Partition("cpu", None, (), ()),
}
PARTITIONS[cluster.DEFAULT] = PARTITIONS["cpu"]


def _job(**settings) -> dict:
    return {"rule": "train", "model": "m", "runtime": 60, **settings}


@pytest.mark.parametrize(
    "job, failed, words",
    [
        (_job(partition="gpus"), "partition", ["'gpus' does not exist", "cpu, gpu", "slurm_partition"]),
        (_job(partition="gpu", runtime=4000), "time limit", ["above partition 'gpu'", "at most 2880"]),
        (_job(partition="gpu", gres="gpu:h100:4"), "gres", ["gpu:h100:4 not offered", "resources.gpu_model"]),
        (_job(partition="gpu", gres="gpu:4", constraint="v100"), "constraint", ["matches no node feature"]),
        (_job(partition="gpu", account="other"), "account", ["account other", "slurm_account"]),
    ],
    ids=["partition", "time-limit", "gres-type", "constraint", "account"],
)
def test_cluster_checks_name_each_problem_and_its_fix(job: dict, failed: str, words: list[str]) -> None:
    checks = cluster.job_checks({"train m": job}, PARTITIONS, [("mine", "normal")])
    bad = [c for c in checks if not c.ok]
    assert [c.name for c in bad] == [f"train m: {failed}"], checks
    text = bad[0].detail + " " + bad[0].fix
    assert all(w in text for w in words), text


def test_a_job_the_cluster_takes_passes_every_check() -> None:
    job = _job(partition="gpu", runtime=2880, gres="gpu:a100:4", constraint="a100", account="mine", qos="normal")
    checks = cluster.job_checks({"train m": job}, PARTITIONS, [("mine", "normal")])
    assert [c.name for c in checks] == [
        "train m: time limit",
        "train m: gres",
        "train m: constraint",
        "train m: account",
    ]
    assert all(c.ok for c in checks)
    default = cluster.job_checks({"evaluate m": _job(runtime=10**6)}, PARTITIONS, None)  # cpu: no limit
    assert all(c.ok for c in default)
    assert cluster.job_checks({"train m": job}, None, None)[0].detail.startswith("skipped")


def test_slurm_time_limits_and_durations_read_and_print() -> None:
    assert [cluster.minutes(t) for t in ("30", "1:30:00", "2-00:00:00", "10:00", "infinite")] == [
        30,
        90,
        2880,
        10,
        None,
    ]
    assert [duration(h) for h in (None, 0.01, 5.12, 76.5)] == ["–", "0 min 36 s", "5 h 07 min", "3 d 04 h"]


def test_price_adds_the_loader_when_the_training_decodes_its_own_clips() -> None:
    cfg = get_config("demo_tokshift")
    probe = {"measured": {"world_size": 2, "batch_size": 8, "accum_steps": 2, "step_seconds": 1.0}}
    alone = price_model(cfg, probe, None, clips_per_epoch=320, val_videos=0, gpus=2)
    assert (alone.global_batch, alone.steps) == (32, 10 * cfg.epochs) and alone.loader_keeps_up is None
    assert alone.train_hours == pytest.approx(alone.steps / 3600) and alone.train_gpu_hours == 2 * alone.train_hours
    slow = {"measured": {**probe["measured"], "loader_items_per_second": 8.0, "loader_workers": 0}}
    decoded = price_model(cfg, slow, None, clips_per_epoch=320, val_videos=0, gpus=2)
    assert decoded.train_hours == pytest.approx(alone.steps * (1.0 + 16 / 8.0) / 3600)  # serial: added
    workers = {"measured": {**slow["measured"], "loader_workers": 4, "peak_memory_bytes": 2, "device_memory_bytes": 10}}
    fed = price_model(cfg, workers, None, clips_per_epoch=320, val_videos=0, gpus=2)
    assert fed.train_hours == pytest.approx(alone.steps * max(1.0, 16 / 32.0) / 3600) and fed.loader_keeps_up
    assert fed.largest_batch == int(8 * 0.9 * 10 / 2)


def test_runtime_preflight_takes_twice_the_projection_and_says_when_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokshift.workflow.config import job_settings, preflight_runtime_notes

    monkeypatch.chdir(tmp_path)
    cfg = repo_config_validated()
    cfg["resources"]["train"]["runtime"] = "preflight"
    cfg["resources"]["per_model"] = {"demo_vit": {"evaluate": {"runtime": "preflight"}}}
    notes = preflight_runtime_notes(cfg, ["demo_tokshift", "demo_vit"])
    assert len(notes) == 3 and all("Run `snakemake preflight` first" in n for n in notes)
    assert job_settings(cfg, "train", "demo_tokshift")["runtime"] == 60  # as auto: the demo's CPU job
    report = tmp_path / "results/demo/preflight.json"
    report.parent.mkdir(parents=True)
    prices = [{"model": "demo_tokshift", "train_hours": 7.2, "evaluate_hours": 0.1}]
    report.write_text(json.dumps({"prices": prices}))
    assert job_settings(cfg, "train", "demo_tokshift")["runtime"] == 15 * 60  # 2 x 7.2 h, whole hours
    assert job_settings(cfg, "evaluate", "demo_tokshift")["runtime"] == 60  # its evaluation: auto
    assert len(preflight_runtime_notes(cfg, ["demo_tokshift", "demo_vit"])) == 2  # demo_vit has none yet


def test_urls_are_tried_and_a_missing_one_names_its_config_key(tmp_path: Path) -> None:
    """A loopback server: one file it serves, one it does not (404)."""
    import functools
    import http.server
    import threading

    (tmp_path / "w.npz").write_bytes(b"npz")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ok = cluster.url_check("weights.ViT-B_16.url", f"{base}/w.npz")
        missing = cluster.url_check("released.m.source", f"{base}/gone.pth")
    finally:
        server.shutdown()
    assert ok.ok and "answers (HEAD 200)" in ok.detail
    assert not missing.ok and "HTTP 404" in missing.detail and "check released.m.source" in missing.fix


def test_the_shards_need_kinetics_sized_room_until_they_are_packed(tmp_path: Path) -> None:
    from tokshift.preflight.commands import _shards_budget

    jobs = {"train k": {"rule": "train", "model": "k400_tokshift_div4_8x32_base_224"}}
    need = _shards_budget(str(tmp_path / "frames"), jobs)
    assert "3122.7 GiB needed (Kinetics-400 shards" in need.detail  # 70M frames x 47.9 kB
    assert need.ok == (shutil.disk_usage(tmp_path).free >= 70_000_000 * 47_900)
    assert need.ok or "free space there" in need.fix
    (tmp_path / "frames" / "train" / "shard-0.lmdb").mkdir(parents=True)
    assert _shards_budget(str(tmp_path / "frames"), jobs).ok  # packed: only reported
    demo = _shards_budget(str(tmp_path / "x"), {"train d": {"rule": "train", "model": "demo_tokshift"}})
    assert demo.ok and "needed" not in demo.detail
