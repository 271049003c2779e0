"""The zoo as timm models: `timm.create_model(<zoo name>)` after `import tokshift.timm` builds the model
`tokshift.build_model` builds, and ``pretrained=True`` with a checkpoint file gives `tokshift.load`'s numbers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.engine_helpers import PackedDemo, TrainedDemo
from tokshift.zoo import get_config, zoo_names

REPO = Path(__file__).resolve().parents[1]
K400_BASE = "k400_tokshift_div4_8x32_base_224"


def _video(cfg, seed: int = 0, b: int = 2, img: int | None = None):
    import torch

    g = torch.Generator().manual_seed(seed)
    size = img or cfg.img_size
    return torch.randn(b, cfg.num_frames, 3, size, size, generator=g, dtype=torch.float64)


def _from_file(name: str, path: Path, **kwargs):
    import timm

    import tokshift.timm  # noqa: F401

    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()


def test_every_zoo_entry_is_listed_with_its_pretrained_tags() -> None:
    import timm

    import tokshift.timm as tt

    assert set(timm.list_models("k400_*")) == set(zoo_names("k400"))
    assert set(timm.list_models("demo_*")) == set(zoo_names("demo"))
    assert set(timm.list_models("*tokshift*")) == {n for n in zoo_names() if get_config(n).arch == "tokshift"}
    # Only the ImageNet-21k starts have a URL; trained checkpoints are given as files.
    assert set(timm.list_pretrained("k400_*")) == {f"{n}.in21k" for n in zoo_names("k400")}
    tagged = set(timm.list_models(["k400_*", "demo_*"], include_tags=True))
    assert {f"{n}.k400_paper" for n in zoo_names("k400")} | {"demo_vit.demo", "demo_tokshift.demo"} <= tagged
    assert tt.trained_tag(get_config("demo_vit")) == "demo"


def test_in21k_urls_and_normalisation_are_the_pipelines() -> None:
    import timm
    import torch

    import tokshift.timm as tt
    from tokshift.data.transforms import normalize

    weights = yaml.safe_load((REPO / "config.yaml").read_text())["weights"]
    assert tt.IMAGENET21K_URLS == {k: v["url"] for k, v in weights.items()}
    for name in zoo_names("k400"):
        cfg = timm.models.get_pretrained_cfg(f"{name}.in21k")
        assert cfg.url == weights[get_config(name).imagenet_weights]["url"], name
    model = timm.create_model(K400_BASE, device="meta")
    data = timm.data.resolve_data_config(model=model)
    assert data["input_size"] == (3, 224, 224) and data["crop_pct"] == 1.0
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
    mean, std = torch.tensor(data["mean"]).view(3, 1, 1), torch.tensor(data["std"]).view(3, 1, 1)
    assert torch.equal(normalize(x.expand(3, 1, 256)), (x / 255.0 - mean) / std)


@pytest.mark.parametrize("name", zoo_names())
def test_timm_builds_the_zoo_architecture(name: str) -> None:
    """Same parameters, shapes and modules (norm eps, activation, shift) as `build_model`, built on the
    meta device (no memory, no init) so the large models cost nothing."""
    import timm
    import torch

    import tokshift.timm  # noqa: F401
    from tokshift.engine.loading import build_model

    with torch.device("meta"):
        ours, theirs = build_model(name), timm.create_model(name)
    assert type(theirs) is type(ours)
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    assert repr(theirs) == repr(ours)
    assert theirs.zoo_config == get_config(name)
    assert theirs.pretrained_cfg["num_classes"] == get_config(name).num_classes


@pytest.mark.parametrize(
    "name",
    # The demo models and one K400 base entry in the default tier; every other zoo entry (the ViT-L ones
    # hold 300M float64 parameters) in the end-to-end tier.
    [
        n if n in ("demo_vit", "demo_tokshift", K400_BASE) else pytest.param(n, marks=pytest.mark.slow)
        for n in zoo_names(None)
    ],
)
def test_logits_equal_build_models_in_float64(name: str) -> None:
    """Both built on the meta device and given the same random float64 weights (initialising a ViT-B
    twice would take most of this file's time). The K400 base entry runs on 2 frames of 32 px: its
    widths, depth and shift on a small input."""
    import timm
    import torch

    import tokshift.timm  # noqa: F401
    from tokshift.engine.loading import build_model

    small = {"num_frames": 2, "img_size": 32} if name.startswith("k400") else {}
    cfg = get_config(name).replace(**small, train_short_side=(64, 64)) if small else get_config(name)
    theirs = timm.create_model(name, **small, device="meta", dtype=torch.float64).to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, p in theirs.named_parameters():  # uniform_: a ViT-B of normal draws takes seconds longer
            p.uniform_(-0.1, 0.1, generator=g)
            if key.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
                p.add_(1.0)
    with torch.device("meta"):
        ours = build_model(cfg.model_dict())
    ours.load_state_dict(theirs.state_dict(), assign=True)
    ours.eval()
    x = _video(cfg)
    with torch.no_grad():
        got, want = theirs(x), ours(x)
    assert got.dtype == torch.float64 and got.shape == (2, cfg.num_classes)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.abs().max() > 1e-3


def test_trained_model_pt_reproduces_tokshift_load(trained_demo: TrainedDemo, packed_demo: PackedDemo) -> None:
    import torch

    import tokshift
    from tokshift.notebook import TrainedModel

    trained = tokshift.load(trained_demo.checkpoint, device="cpu")
    model = _from_file("demo_tokshift.demo", trained_demo.checkpoint)
    assert model.pretrained_cfg["label_names"] == tuple(trained.classes)
    x = _video(trained.config).float()
    with torch.no_grad():
        assert torch.equal(model(x), trained.model(x))
    clip = sorted(packed_demo.videos.glob("val/*.mp4"))[0]
    as_timm = TrainedModel(model, model.zoo_config, list(model.pretrained_cfg["label_names"]), {})
    top5 = tokshift.predict(as_timm, clip, clips=2, crops=1)
    assert top5 == tokshift.predict(trained, clip, clips=2, crops=1)
    assert len(top5) == min(5, len(trained.classes))


def test_original_pth_of_a_trained_model_loads_the_same(trained_demo: TrainedDemo, tmp_path: Path) -> None:
    import torch

    import tokshift
    from tests.test_demo_pipeline import export_original

    pth = export_original(trained_demo.checkpoint, tmp_path / "best_ckpt_e7.pth")
    trained = tokshift.load(trained_demo.checkpoint, device="cpu")
    model = _from_file("demo_tokshift", pth)
    x = _video(trained.config, seed=1).float()
    with torch.no_grad():
        assert torch.equal(model(x), trained.model(x))


def test_export_loads_from_its_file_its_folder_and_a_hub_cache(
    trained_demo: TrainedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tokshift export --format hub` output through a file overlay, timm's ``local-dir:`` and ``hf-hub:``
    (a Hub cache laid out as huggingface_hub lays it out, read offline: this machine has no network)."""
    import huggingface_hub.constants
    import timm
    import torch

    import tokshift
    import tokshift.timm  # noqa: F401
    from tests.engine_helpers import run_cli_inprocess

    out = tmp_path / "export"
    res = run_cli_inprocess("export", str(trained_demo.checkpoint), "--format", "hub", "--out-dir", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--lab--demo_tokshift"
    shutil.copytree(out, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    trained = tokshift.load(trained_demo.checkpoint, device="cpu")
    x = _video(trained.config, seed=2).float()
    models = {
        "file": _from_file("demo_tokshift", out / "model.safetensors"),
        "local-dir": timm.create_model(f"local-dir:{out}", pretrained=True).eval(),
        "hf-hub": timm.create_model("hf-hub:lab/demo_tokshift", pretrained=True, cache_dir=tmp_path / "hub").eval(),
    }
    with torch.no_grad():
        want = trained.model(x)
        for how, model in models.items():
            assert torch.equal(model(x), want), how
            assert model.pretrained_cfg["label_names"] == tuple(trained.classes), how


def test_num_classes_img_size_and_num_frames_override_the_zoo(trained_demo: TrainedDemo) -> None:
    import timm
    import torch

    import tokshift.timm  # noqa: F401
    from tokshift.checkpoints import open_checkpoint, resize_pos_embed

    model = timm.create_model("demo_tokshift", num_classes=7, num_frames=4, img_size=96)
    assert model.head.out_features == 7 and model.num_classes == 7
    assert model(torch.zeros(1, 4, 3, 96, 96)).shape == (1, 7)
    assert (model.zoo_config.num_frames, model.zoo_config.img_size) == (4, 96)

    # From a trained file: another class count starts a zero head, another size resizes the position table.
    saved = open_checkpoint(trained_demo.checkpoint).weights
    model = _from_file("demo_tokshift", trained_demo.checkpoint, num_classes=7, img_size=96)
    assert model.head.out_features == 7 and not model.head.weight.any()
    assert torch.equal(model.pos_embed, resize_pos_embed(saved["pos_embed"], (6, 6)))
    assert torch.equal(model.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    assert "label_names" not in model.pretrained_cfg


def test_google_npz_loads_as_build_model_loads_it(tmp_path: Path) -> None:
    """Through a file and through the `.in21k` tag's URL route (here a file:// URL into a fresh cache)."""
    import timm
    import torch

    import tokshift.timm  # noqa: F401
    from tests.weights_helpers import DEPTH, HEADS, MLP, PATCH, D, write_google_npz
    from tokshift.engine.loading import build_model

    npz = tmp_path / "ViT-B_16.npz"
    write_google_npz(npz, grid=4)
    shape = {
        "embed_dim": D,
        "depth": DEPTH,
        "num_heads": HEADS,
        "mlp_ratio": MLP / D,
        "patch_size": PATCH,
        "img_size": 48,
    }
    want = build_model({**get_config(K400_BASE).model_dict(), **shape}, init_from=npz).state_dict()
    by_file = _from_file(K400_BASE, npz, **shape)
    by_url = timm.create_model(
        f"{K400_BASE}.in21k",
        pretrained=True,
        pretrained_cfg_overlay=dict(url=npz.as_uri()),
        cache_dir=tmp_path / "cache",
        **shape,
    )
    for model in (by_file, by_url):
        got = model.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert not model.head.weight.any() and model.pos_embed.shape[1] == 1 + 6 * 6


def test_a_file_of_another_model_fails_naming_file_and_model(trained_demo: TrainedDemo, tmp_path: Path) -> None:
    import timm

    import tokshift.timm  # noqa: F401
    from tests.test_demo_pipeline import export_original
    from tokshift.errors import BadInput

    pt = trained_demo.checkpoint
    with pytest.raises(BadInput) as err:  # same shapes, other architecture: caught by the model.pt's config
        _from_file("demo_vit", pt)
    assert str(pt) in str(err.value) and "'demo_tokshift'" in str(err.value) and "'demo_vit'" in str(err.value)
    assert "arch='tokshift' (not 'vit')" in str(err.value)
    with pytest.raises(BadInput) as err:  # an original .pth records no model: its shapes must fit (meta: no init)
        _from_file(K400_BASE, export_original(pt, tmp_path / "demo.pth"), device="meta")
    assert "demo.pth" in str(err.value) and repr(K400_BASE) in str(err.value) and "size mismatch" in str(err.value)
    shape = {"embed_dim": 96, "depth": 4, "num_heads": 4, "img_size": 64}  # the backbone fits, the head does not
    with pytest.raises(BadInput, match=r"has a 4-class head.*pass num_classes=4"):
        _from_file(K400_BASE, tmp_path / "demo.pth", **shape)
    assert _from_file(K400_BASE, tmp_path / "demo.pth", **shape, num_classes=4).head.weight.any()
    with pytest.raises(BadInput, match=r"demo_tokshift.demo has no weights to load.*pretrained_cfg_overlay"):
        timm.create_model("demo_tokshift", pretrained=True)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        _from_file("demo_tokshift", tmp_path / "nowhere.pt")


def test_the_docs_example_runs(
    trained_demo: TrainedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """docs/timm.md's first example, run where the demo pipeline leaves its trained model."""
    text = (REPO / "docs" / "timm.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    target = tmp_path / "results/demo/train/demo_tokshift/model.pt"
    target.parent.mkdir(parents=True)
    target.symlink_to(trained_demo.checkpoint)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/timm.md", "exec"), {})
    printed = capsys.readouterr().out
    classes = __import__("torch").load(trained_demo.checkpoint, weights_only=True)["classes"]
    assert printed.startswith("[(") and sum(f"'{c}'" in printed for c in classes) == 3, printed


def test_import_tokshift_stays_light() -> None:
    """`tokshift.timm` registers only when imported: `import tokshift` loads neither torch nor timm."""
    code = "import sys, tokshift; print(sorted({'torch', 'timm', 'tokshift.timm'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
