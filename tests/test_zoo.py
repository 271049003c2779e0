"""The zoo: names, recipes, parameters and GFLOPs computed from the models vs the paper."""

from __future__ import annotations

import csv
import io

import pytest

from tests.engine_helpers import run_cli_inprocess
from tokshift.zoo import ZOO, get_config, zoo_names

K400 = [
    "k400_vit_8x32_224",
    "k400_tokshift_div4_8x32_base_224",
    "k400_tokshift_div4_8x32_base_256",
    "k400_tokshift_div4_8x32_base_384",
    "k400_tokshift_div4_16x32_base_224",
    "k400_tokshift_div4_8x32_large_384",
    "k400_tokshift_div4_12x32_large_384",
]


def test_zoo_names_are_the_interface() -> None:
    assert zoo_names("k400") == K400
    assert set(zoo_names("demo")) == {"demo_vit", "demo_tokshift"}


def test_zoo_cli_csv_gflops_and_params_match_paper() -> None:
    res = run_cli_inprocess("zoo", "--format", "csv")
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(out))}
    assert set(rows) == set(ZOO)
    for name in K400:
        r, cfg = rows[name], get_config(name)
        assert abs(float(r["gflops_per_view"]) / cfg.paper_gflops - 1) < 0.005, name
        assert float(r["paper_top1"]) == cfg.paper_top1
        expect = 86.1 if cfg.backbone == "ViT-B_16" else 304.1
        # 384 px adds (24^2 - 14^2) * 768 position parameters to ViT-B.
        assert abs(float(r["params_m"]) - expect) < 0.5, (name, r["params_m"])


def test_zoo_cli_shows_the_reference_layout_each_job_needs() -> None:
    """GPUs, per-GPU batch and accumulation are read from each entry, and multiply to its global batch."""
    res = run_cli_inprocess("zoo", "--format", "csv", "--dataset", "k400")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert list(rows) == K400
    layout = {n: tuple(int(rows[n][k]) for k in ("gpus", "batch_per_gpu", "accum_steps", "global_batch")) for n in K400}
    assert layout["k400_vit_8x32_224"] == (2, 21, 10, 420)
    assert layout["k400_tokshift_div4_16x32_base_224"] == (4, 3, 10, 120)  # the entry with 4 GPUs
    assert layout["k400_tokshift_div4_8x32_large_384"] == (8, 1, 10, 80)
    for name, (gpus, batch, accum, global_batch) in layout.items():
        cfg = get_config(name)
        assert (gpus, batch, accum) == (cfg.gpus, cfg.batch_size, cfg.accum_steps), name
        assert global_batch == gpus * batch * accum == cfg.reference_global_batch, name
    assert {g for g, *_ in layout.values()} == {2, 4, 8}


def test_zoo_table_has_every_column_in_order() -> None:
    """The text table has the CSV's columns, one line per entry, each cell under its heading."""
    from tokshift.flops import ZOO_COLUMNS

    res = run_cli_inprocess("zoo", "--dataset", "demo")
    assert res.returncode == 0, res.stderr[-2000:]
    head, *lines = res.stdout.splitlines()
    assert head.split() == list(ZOO_COLUMNS)
    assert [line.split()[0] for line in lines] == ["demo_vit", "demo_tokshift"]
    at = head.index("global_batch")
    assert all(line[at:].split()[0] == "16" for line in lines)


def test_reference_recipe() -> None:
    c = get_config("k400_tokshift_div4_8x32_base_256")
    assert (c.optimizer, c.momentum, c.weight_decay, c.epochs, c.accum_steps) == ("sgd", 0.9, 0.0, 18, 10)
    assert (c.batch_size, c.gpus, c.lr, c.train_short_side) == (16, 2, 0.076, (256, 380))
    assert c.lr_milestones == (10, 15) and c.grad_clip == 1.0 and c.label_smoothing == 0.1
    assert c.reference_global_batch == 16 * 2 * 10


def test_unknown_name_and_field_are_named() -> None:
    with pytest.raises(ValueError, match="k400_nope"):
        get_config("k400_nope")
    with pytest.raises(ValueError, match="epoch_count"):
        get_config("demo_vit").replace(epoch_count=3)
    with pytest.raises(ValueError, match="img_size"):
        get_config("demo_vit").replace(img_size=60)


def test_config_round_trips_through_dict() -> None:
    c = get_config("k400_tokshift_div4_16x32_base_224")
    assert type(c).from_dict(c.to_dict()) == c


def test_a_config_saved_with_the_old_weights_key_loads() -> None:
    """Checkpoints record the zoo entry; those written before `imagenet_weights` call it `pretrained`."""
    c = get_config("k400_vit_8x32_224")
    saved = {("pretrained" if k == "imagenet_weights" else k): v for k, v in c.to_dict().items()}
    assert type(c).from_dict(saved) == c and c.imagenet_weights == "ViT-B_16"
    assert get_config("demo_vit").imagenet_weights is None  # the demo models train from scratch


def test_zoo_row_computes_from_model() -> None:
    from tokshift.flops import zoo_row

    r = zoo_row("demo_tokshift")
    assert 0.3 < r["params_m"] < 1.0 and 0 < r["gflops_per_view"] < 1
