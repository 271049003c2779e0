"""The class-order check: two head rows in each other's place are named, a sound model is not."""

from __future__ import annotations

import numpy as np

from tokshift.engine.class_order import suspect_swaps

CLASSES = ["skiing (not slalom or crosscountry)", "skiing crosscountry", "surfing", "zumba"]


def predictions(accuracy: float, seed: int = 0, videos: int = 40) -> tuple[list[int], list[int]]:
    """A model right on `accuracy` of each class's videos, wrong uniformly otherwise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), videos)
    wrong = (labels + rng.integers(1, len(CLASSES), labels.size)) % len(CLASSES)
    preds = np.where(rng.random(labels.size) < accuracy, labels, wrong)
    return labels.tolist(), preds.tolist()


def test_two_swapped_rows_are_named_with_both_classes() -> None:
    labels, preds = predictions(0.7)
    assert suspect_swaps(labels, preds, CLASSES) == []
    exchanged = [{0: 1, 1: 0}.get(p, p) for p in preds]  # the head's rows 0 and 1 in each other's place
    (swap,) = suspect_swaps(labels, exchanged, CLASSES)
    assert (swap.first, swap.second) == (CLASSES[0], CLASSES[1])
    assert swap.first_as_second > swap.first_right and swap.second_as_first > swap.second_right
    assert repr(CLASSES[0]) in swap.describe() and repr(CLASSES[1]) in swap.describe()


def test_a_weak_but_sound_model_and_one_sided_confusion_are_not_named() -> None:
    labels, preds = predictions(0.3, seed=1)
    assert suspect_swaps(labels, preds, CLASSES) == []
    # Every video of class 0 predicted 1, but class 1 right: a confusion, not an exchange.
    one_sided = [1 if label == 0 else label for label in labels]
    assert suspect_swaps(labels, one_sided, CLASSES) == []


def test_the_early_check_flags_a_checkpoint_far_below_its_paper_number() -> None:
    from tokshift.engine.class_order import early_verdict

    wrong, line = early_verdict("k400_tokshift_div4_8x32_base_224", 74.5, 200, 77.28)
    assert not wrong and "top-1 74.5 % on the first 200 videos; the paper reports 77.28 %" in line
    wrong, line = early_verdict("k400_tokshift_div4_8x32_base_224", 41.0, 200, 77.28)
    assert wrong and "released.k400_tokshift_div4_8x32_base_224" in line and "class order" in line
    assert early_verdict("demo_vit", 30.0, 64, None) == (
        False,
        "early check: top-1 30.0 % on the first 64 videos (no paper number for demo_vit)",
    )


def test_the_underscored_order_of_kinetics_exchanges_exactly_the_two_skiing_classes() -> None:
    from importlib.resources import files

    from tokshift.engine.class_order import head_rows

    kinetics = files("tokshift.data").joinpath("kinetics400_classes.txt").read_text().splitlines()
    assert head_rows(kinetics, "sorted") == list(range(400))
    rows = head_rows(kinetics, "sorted_underscored")
    moved = [kinetics[i] for i, row in enumerate(rows) if row != i]
    assert moved == ["skiing (not slalom or crosscountry)", "skiing crosscountry"]


def test_import_puts_the_head_rows_of_another_order_in_the_datasets_order(tmp_path) -> None:
    import torch

    from tests.original_model import original_net, save_original
    from tokshift.engine.loading import import_original, load_trained_model

    classes = ["skiing (not slalom or crosscountry)", "skiing crosscountry", "zumba"]
    net = original_net("tokshift", classes=3)
    src = save_original(net, tmp_path / "ckpt.pth")
    for order, rows in (("sorted", [0, 1, 2]), ("sorted_underscored", [1, 0, 2])):
        out = tmp_path / order / "model.pt"
        import_original(src, "demo_tokshift", out, classes=classes, class_order=order)
        state = torch.load(out, weights_only=True)
        assert state["class_order"] == order
        head = load_trained_model(out, torch.device("cpu")).model.head
        original = dict(net.named_parameters())
        weight = next(v for k, v in original.items() if k.endswith("head.weight"))
        assert torch.equal(head.weight.detach().double(), weight.detach().double()[rows]), order
