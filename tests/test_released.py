"""`checkpoints: released`: the plan evaluates the original's checkpoints and trains nothing.

The end-to-end run (exported demo models served over HTTP) is in test_demo_pipeline.py.
"""

from __future__ import annotations

import http.server
import re
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.engine_helpers import run_cli_inprocess
from tests.workflow_helpers import REPO, copy_workflow, planned_jobs, snakemake
from tokshift.errors import ExitCode
from tokshift.zoo import zoo_names

K400 = zoo_names("k400")


def readme_released_config() -> dict:
    """The `released:` config shown in the README's section "Evaluate the released checkpoints"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Evaluate the released checkpoints", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    configs = [yaml.safe_load(b) for b in blocks]
    return next(c for c in configs if isinstance(c, dict) and "released" in c)


@pytest.fixture()
def k400_wf(tmp_path: Path) -> Path:
    """The workflow with a (videoless) kinetics400 entry, so a dry run can plan the K400 zoo."""
    wf = copy_workflow(tmp_path / "wf")
    ann = tmp_path / "ann.csv"
    ann.write_text("label,youtube_id,time_start,time_end,split\n")
    cfg = yaml.safe_load((wf / "config.yaml").read_text())
    cfg["datasets"]["kinetics400"] = {
        "kind": "kinetics",
        "zoo": "k400",
        "root": str(tmp_path),
        "annotations": {"train": str(ann), "val": str(ann)},
    }
    (wf / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wf


def test_readme_config_plans_the_seven_released_checkpoints_without_training(k400_wf: Path) -> None:
    released = readme_released_config()
    assert sorted(released["released"]) == sorted(K400)
    (k400_wf / "released.yaml").write_text(yaml.safe_dump(released))
    for entry in released["released"].values():
        path = k400_wf / entry["source"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"placeholder: a dry run reads no checkpoint")
    out = snakemake(
        k400_wf,
        "-n",
        "-p",
        "--cores",
        "2",
        "--configfile",
        "released.yaml",
        "--config",
        "dataset=kinetics400",
        "checkpoints=released",
        check=True,
    ).stdout
    jobs = planned_jobs(out)
    assert jobs["import_released"] == 7 and jobs["evaluate_released"] == 7 and jobs["collect_released"] == 1
    for rule in ("train", "download_weights", "fetch_released", "evaluate", "collect_results"):
        assert rule not in jobs, (rule, jobs)
    assert jobs["pack_shard"] == 16  # the validation split only
    # Local files are used in place; evaluation resizes as the original did.
    assert "checkpoints/k400_vit_8x32_224.pth" in out and "resources/released" not in out
    assert out.count("--resize bicubic") == 7 and "--resize linear" not in out
    assert out.count("--faithful true") == 7 and "--amp auto" in out  # the original's views, fp32 (auto)
    assert "results/kinetics400/released/model_zoo.csv" in out
    assert "--classes results/kinetics400/index/val.classes.txt" in out


@pytest.fixture()
def gone_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A loopback URL that answers every GET with 404 Not Found (a released checkpoint that moved)."""

    class Gone(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            self.send_error(404)

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gone)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/tokshift.pth"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_url_sources_are_downloaded_and_an_explicit_resize_is_kept(tmp_path: Path, gone_url: str) -> None:
    wf = copy_workflow(tmp_path / "wf")
    sha = "ab" * 32
    url = gone_url
    released = {
        "demo_vit": {"source": "http://127.0.0.1:9/demo_vit.pth", "sha256": sha},
        "demo_tokshift": {"source": url, "sha256": None},
    }
    (wf / "released.yaml").write_text(
        yaml.safe_dump(
            {"checkpoints": "released", "evaluate": {"resize": "linear", "faithful": False}, "released": released}
        )
    )
    out = snakemake(wf, "-n", "-p", "--cores", "2", "--configfile", "released.yaml", check=True).stdout
    jobs = planned_jobs(out)
    assert jobs["fetch_released"] == 2 and jobs["import_released"] == 2 and jobs["evaluate_released"] == 2
    assert "train" not in jobs and "evaluate" not in jobs
    assert f"--sha256={sha}" in out and "resources/released/demo_tokshift.pth" in out
    assert "--sha256= --config-key" in out  # no sha256 pinned: recorded on download
    assert out.count("--resize linear") == 2 and "--resize bicubic" not in out
    assert out.count("--faithful false") == 2
    # The rule's own command on a URL that answers 404 names the setting that holds the URL.
    (line,) = [ln for ln in out.splitlines() if "tokshift download" in ln and url in ln]
    argv = shlex.split(line[line.index("python -m tokshift") :].split(" > ")[0])
    assert argv[:4] == ["python", "-m", "tokshift", "download"]
    dest = "resources/released/demo_tokshift.pth"  # relative to the workflow
    res = run_cli_inprocess(*[str(wf / a) if a == dest else a for a in argv[3:]])
    assert res.returncode == ExitCode.BAD_INPUT, res.stderr
    assert f"HTTP 404 Not Found for {url}. Check released.demo_tokshift.source in config.yaml" in res.stderr
    assert "weights." not in res.stderr and not (wf / "resources" / "released" / "demo_tokshift.pth").exists()


def test_trained_mode_plan_is_unchanged(tmp_path: Path) -> None:
    wf = copy_workflow(tmp_path / "wf")
    jobs = planned_jobs(snakemake(wf, "-n", "--cores", "2", check=True).stdout)
    assert jobs["train"] == 2 and jobs["evaluate"] == 2 and jobs["collect_results"] == 1
    assert not {"fetch_released", "import_released", "evaluate_released", "collect_released"} & set(jobs)


def test_model_without_released_entry_is_rejected_naming_the_key(tmp_path: Path) -> None:
    wf = copy_workflow(tmp_path / "wf")
    (wf / "vit.pth").write_bytes(b"x")
    proc = snakemake(
        wf,
        "-n",
        "--cores",
        "2",
        "--config",
        "checkpoints=released",
        "released={demo_vit: {source: vit.pth}}",
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "config key 'released.demo_tokshift'" in text and "released.demo_vit" not in text
    assert "Job stats" not in text


def test_missing_local_released_file_is_rejected_naming_the_key(tmp_path: Path) -> None:
    wf = copy_workflow(tmp_path / "wf")
    proc = snakemake(
        wf,
        "-n",
        "--cores",
        "2",
        "--config",
        "checkpoints=released",
        "released={demo_vit: {source: vit.pth}, demo_tokshift: {source: gone/tokshift.pth}}",
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "config key 'released.demo_tokshift.source'" in text and "gone/tokshift.pth" in text
    assert "released.demo_vit.source" in text  # vit.pth does not exist either


def test_collect_names_each_released_source_and_rejects_stale_metrics(tmp_path: Path) -> None:
    """A model.pt from import-original gives the row its checkpoint, epoch and source; stale metrics are refused."""
    import json

    from tests.original_model import original_net, save_original
    from tokshift.engine.loading import import_original
    from tokshift.results import ResultsError, collect_released, write_outputs

    pth = save_original(original_net("tokshift", classes=4), tmp_path / "best.pth")
    done = import_original(pth, "demo_tokshift", tmp_path / "released/model.pt", classes=list("abcd"))
    metrics = {
        "model": "demo_tokshift",
        "checkpoint_sha256": done.sha256,
        **dict.fromkeys(("top1", "top5", "top1_softmax", "top1_1view", "top1_3view", "mean_class_acc"), 50.0),
        "videos": 8,
        "views": 30,
        "failed": 0,
    }
    m_file = tmp_path / "metrics.json"
    m_file.write_text(json.dumps(metrics))
    url = "https://example.org/best.pth"
    df = collect_released("demo", [m_file], [done.out], sources={"demo_tokshift": url})
    row = df.set_index("model").loc["demo_tokshift"]
    assert row["checkpoint_source"] == url and row["checkpoint_sha256"] == done.sha256 and row["epochs"] == 18
    assert row["checkpoint"] == str(done.out) and df.attrs["sources"]["demo_tokshift"]["source"] == str(pth.resolve())
    # Without a given source, the row names the file the model.pt was converted from.
    plain = collect_released("demo", [m_file], [done.out]).set_index("model")
    assert plain.loc["demo_tokshift", "checkpoint_source"] == str(pth.resolve())
    written = write_outputs(df, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.png")
    assert url in written[1].read_text()
    m_file.write_text(json.dumps({**metrics, "checkpoint_sha256": "ab" * 32}))
    with pytest.raises(ResultsError, match=r"metrics\.json.*stale"):
        collect_released("demo", [m_file], [done.out])
