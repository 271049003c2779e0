"""README.md says what the code does: its zoo table is the zoo's, and its first Kinetics run plans.

The zoo table is generated, never typed: `tokshift zoo --format csv | python -m tests.test_readme`
prints it from the zoo, and the test compares every cell of README's table with `zoo_row()`.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.engine_helpers import run_cli_inprocess
from tests.workflow_helpers import REPO, DemoRun, copy_workflow, planned_jobs, snakemake
from tokshift.settings import load_schema

README = REPO / "README.md"
ZOO_TABLE_MARK = "<!-- zoo-table: tokshift zoo --format csv | python -m tests.test_readme -->"
FIRST_RUN_MARK = "<!-- first-kinetics-run -->"


def _cell(v: Any) -> str:
    return "—" if v is None or v == "" else str(v)


# README heading -> the cell from one row of `tokshift zoo --format csv` (or of zoo_row()).
ZOO_TABLE: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "model": lambda r: f"`{r['name']}`",
    "arch": lambda r: _cell(r["arch"]),
    "backbone": lambda r: _cell(r["backbone"]),
    "frames × stride": lambda r: f"{r['num_frames']} × {r['frame_stride']}",
    "img": lambda r: _cell(r["img_size"]),
    "params (M)": lambda r: _cell(r["params_m"]),
    "GFLOPs/view": lambda r: _cell(r["gflops_per_view"]),
    "GPUs": lambda r: _cell(r["gpus"]),
    "batch/GPU": lambda r: _cell(r["batch_per_gpu"]),
    "accum": lambda r: _cell(r["accum_steps"]),
    "global batch": lambda r: _cell(r["global_batch"]),
    "paper: GFLOPs/view": lambda r: _cell(r["paper_gflops"]),
    "paper: top-1 (30 views)": lambda r: _cell(r["paper_top1"]),
}


def zoo_table_markdown(rows: list[Mapping[str, Any]]) -> str:
    """README's zoo table from rows of `tokshift zoo --format csv`."""
    lines = ["| " + " | ".join(ZOO_TABLE) + " |", "|" + "---|" * len(ZOO_TABLE)]
    lines += ["| " + " | ".join(cell(r) for cell in ZOO_TABLE.values()) + " |" for r in rows]
    return "\n".join(lines)


def _readme_block(mark: str, fence_or_table: str) -> list[str]:
    """The lines of the table (`|`) or fenced block (```) right after `mark` in README.md."""
    lines = README.read_text().splitlines()
    assert mark in lines, f"README.md lost its marker {mark!r}"
    rest = lines[lines.index(mark) + 1 :]
    while rest and not rest[0].strip():
        rest = rest[1:]
    if fence_or_table == "table":
        block = []
        for line in rest:
            if not line.startswith("|"):
                break
            block.append(line)
        return block
    assert rest and rest[0].startswith("```"), f"no fenced block after {mark!r} in README.md"
    end = next(i for i, line in enumerate(rest[1:], 1) if line.startswith("```"))
    return rest[1:end]


def _split_row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_readme_zoo_table_is_the_zoo() -> None:
    """Every cell of README's zoo table, computed GFLOPs beside the paper's, equals what the zoo computes."""
    from tokshift.flops import zoo_row
    from tokshift.zoo import zoo_names

    head, rule, *body = _readme_block(ZOO_TABLE_MARK, "table")
    assert _split_row(head) == list(ZOO_TABLE), "README's zoo table headings changed; regenerate it"
    assert set(rule) <= set("|-: ")
    names = zoo_names(None)
    readme_names = [_split_row(line)[0].strip("`") for line in body]
    assert readme_names == names, "README's zoo table does not list the zoo's entries in order; regenerate it"
    regenerate = "regenerate it: tokshift zoo --format csv | python -m tests.test_readme"
    for line, name in zip(body, names):
        row = zoo_row(name)
        for heading, readme_cell in zip(ZOO_TABLE, _split_row(line)):
            want = ZOO_TABLE[heading](row)
            assert readme_cell == want, (
                f"README zoo table, {name}, {heading!r}: {readme_cell!r} != {want!r}; {regenerate}"
            )


def _fake_kinetics(root: Path) -> dict[str, Any]:
    """A Kinetics-400 layout as released: tiny files named like the videos, and the annotation CSVs."""
    rows = {
        "train": [("abseiling", "-3B32lodo2M", 59, 69), ("zumba", "zz_Top-1234", 105, 115)],
        "validate": [("abseiling", "v_absei_001", 3, 13), ("zumba", "--07WQ2iBlw", 1, 11)],
    }
    (root / "annotations").mkdir(parents=True)
    for split, clips in rows.items():
        with open(root / "annotations" / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            w.writerows((*clip, split) for clip in clips)
        for label, yid, start, end in clips:
            (root / split / label).mkdir(parents=True, exist_ok=True)
            (root / split / label / f"{yid}_{start:06d}_{end:06d}.mp4").write_bytes(b"\0" * 16)
    return {
        "kind": "kinetics",
        "zoo": "k400",
        "root": str(root),
        "annotations": {"train": str(root / "annotations/train.csv"), "val": str(root / "annotations/validate.csv")},
    }


def _commands(block: list[str]) -> list[list[str]]:
    """The snakemake and tokshift commands of a README block, without `nohup` and redirections."""
    out = []
    for line in block:
        words = shlex.split(line, comments=True)
        if words[:1] == ["nohup"]:
            words = words[1:]
        cut = next((i for i, w in enumerate(words) if w[:1] in "<>&|" or w[:2] in ("1>", "2>")), len(words))
        words = words[:cut]
        if words[:1] in (["snakemake"], ["tokshift"]):
            out.append(words)
    return out


@pytest.mark.slow  # six dry runs of the Kinetics plan: the end-to-end tier
def test_first_kinetics_run_dry_runs(tmp_path: Path) -> None:
    """README's "First Kinetics run", with config.yaml filled in as it says, plans every model on GPUs."""
    block = _readme_block(FIRST_RUN_MARK, "fence")
    commands = _commands(block)
    snakemakes = [c for c in commands if c[0] == "snakemake"]
    assert len(snakemakes) >= 3 and any(c[:2] == ["tokshift", "zoo"] for c in commands), block
    assert all("--profile" in c and "dataset=kinetics400" in c for c in snakemakes), snakemakes

    wf = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((wf / "config.yaml").read_text())
    cfg["datasets"]["kinetics400"] = _fake_kinetics(tmp_path / "k400")
    cfg["resources"].update(slurm_partition="gpu", slurm_account="my_project")
    if "cpu_partition" in load_schema()["properties"]["resources"]["properties"]:
        cfg["resources"]["cpu_partition"] = "cpu"
    (wf / "config.yaml").write_text(yaml.safe_dump(cfg))

    plans = []
    for cmd in commands:
        if cmd[0] == "tokshift":
            res = run_cli_inprocess(*cmd[1:])
            assert res.returncode == 0, f"{shlex.join(cmd)}:\n{res.stderr[-3000:]}"
            continue
        args = cmd[1:] if "-n" in cmd or "--dry-run" in cmd else ["-n", *cmd[1:]]
        proc = snakemake(wf, *args, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{shlex.join(cmd)} failed ({proc.returncode}):\n{out[-5000:]}"
        plans.append((cmd, out))
    assert not (wf / "results").exists() and not (wf / "logs" / "slurm").exists()  # nothing ran

    one_model = next(out for cmd, out in plans if "models=[k400_vit_8x32_224]" in cmd)
    counts = planned_jobs(one_model)
    assert counts.get("train") == 1 and counts.get("evaluate") == 1, counts
    train_jobs = [job for job in one_model.split("\n\n") if "rule train:" in job or "localrule train:" in job]
    assert train_jobs, one_model[-3000:]
    resources = next(line for line in train_jobs[0].splitlines() if line.strip().startswith("resources:"))
    # gpus: auto (the default) asks for the zoo entry's reference count: 2 for k400_vit_8x32_224.
    assert "gres=gpu:2" in resources, f"the train job of k400_vit_8x32_224 asks for no GPUs by default: {resources}"
    whole_zoo = [out for cmd, out in plans if not any(a.startswith("models=") for a in cmd)]
    assert whole_zoo and planned_jobs(whole_zoo[0]).get("train") == 7


if __name__ == "__main__":
    print(zoo_table_markdown(list(csv.DictReader(io.StringIO(sys.stdin.read())))))


@pytest.mark.slow
def test_use_the_models_from_your_own_code_runs_as_written(demo_run: DemoRun, tmp_path: Path) -> None:
    """README's "Use the models from your own code": its timm, export and load blocks run verbatim in the
    demo pipeline's folder, and what they print is the model's: timm's probabilities, predict's top-5."""
    import shutil

    wf = tmp_path / "wf"
    shutil.copytree(demo_run.wf, wf, symlinks=True)
    env = {**os.environ, "PYTHONPATH": str(wf)}  # the run's own code, as its jobs use it
    ran = {}
    for name, kind in (("timm", "python"), ("export", "bash"), ("load", "python")):
        code = "\n".join(_readme_block(f"<!-- own-code: {name} -->", "fence"))
        command = [sys.executable, "-c", code] if kind == "python" else ["bash", "-c", code]
        ran[name] = subprocess.run(command, cwd=wf, env=env, capture_output=True, text=True, timeout=600)
        assert ran[name].returncode == 0, (name, ran[name].stderr[-3000:])
    assert "tensor([[" in ran["timm"].stdout and "k400_tokshift_div4_8x32_base_224" in ran["timm"].stdout
    assert {p.name for p in (wf / "export/demo_tokshift").iterdir()} >= {
        "model.safetensors",
        "config.json",
        "README.md",
    }
    shown = subprocess.run(
        [sys.executable, "-m", "tokshift", "provenance", "--json", "export/demo_tokshift"],
        cwd=wf,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    trained = json.loads((wf / "results/demo/train/demo_tokshift/train_summary.json").read_text())
    assert json.loads(shown.stdout) == trained["provenance"]  # the export carries the training's provenance
    top = ast.literal_eval(ran["load"].stdout.strip().splitlines()[-1])
    assert len(top) == 4 and top[0][0] == "brighten"  # all 4 classes; the demo TokShift gets this video right


@pytest.mark.slow
def test_relinking_the_previous_model_after_a_failed_retrain_runs_as_written(demo_run: DemoRun, tmp_path: Path) -> None:
    """README's recipe after a retrain that failed (here: with a learning rate that diverges) keeps the previous
    model: Snakemake then plans nothing for it under the original settings, and the model is the same file."""
    import hashlib
    import shutil

    wf = tmp_path / "wf"
    shutil.copytree(demo_run.wf, wf, symlinks=True)
    folder = wf / "results/demo/train/demo_tokshift"
    previous = hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    failed = snakemake(
        wf,
        "--cores",
        "2",
        "--config",
        "train={per_model: {demo_tokshift: {lr: 1e30}}}",
        "--",
        "results/demo/train/demo_tokshift/model.pt",
    )
    assert failed.returncode != 0 and not (folder / "model.pt").exists()
    assert "attempt ends: exit 3 NOT_RETRYABLE" in (folder / "train.log").read_text()  # it diverged
    code = "\n".join(_readme_block("<!-- relink-previous-model -->", "fence"))
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # this interpreter's snakemake
    subprocess.run(["bash", "-c", code], cwd=wf, env={**os.environ, "PATH": path}, check=True, timeout=300)
    plan = snakemake(wf, "-n", "--cores", "2", check=True)
    assert "Nothing to be done" in plan.stdout + plan.stderr, (plan.stdout + plan.stderr)[-3000:]
    assert hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest() == previous
