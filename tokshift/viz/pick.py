"""Which validation videos to explain: the most and least confident right answers and the worst errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["pick_roles", "pick_videos"]


def pick_roles(errors: int = 2) -> list[str]:
    """Every role `pick_videos` can fill, in its order (a workflow names one figure per role)."""
    return ["correct_most_confident", "correct_least_confident"] + [f"error_{i}" for i in range(1, errors + 1)]


def pick_videos(pred: pd.DataFrame, errors: int = 2) -> list[tuple[str, str]]:
    """(role, video_id) pairs from evaluated predictions.csv rows (`read_predictions`).

    Roles: `correct_most_confident`, `correct_least_confident` (by the top-1 probability of
    the fused views) and `error_1`, `error_2`, ... for the `errors` most confident wrong
    top-1s. A role without a video (no errors, say) is left out; one video never gets two roles.
    """
    import pandas as pd

    ranked = pd.DataFrame(
        {
            "video_id": pred["video_id"].astype(str),
            "right": pred["pred1"] == pred["label"],
            "score": pd.to_numeric(pred["score1"], errors="coerce"),
        }
    ).sort_values(["score", "video_id"], kind="stable")
    right = ranked[ranked["right"]]
    wrong = ranked[~ranked["right"]]
    picks: list[tuple[str, str]] = []
    if len(right):
        picks.append(("correct_most_confident", str(right["video_id"].iloc[-1])))
    if len(right) > 1:
        picks.append(("correct_least_confident", str(right["video_id"].iloc[0])))
    for i, vid in enumerate(list(wrong["video_id"])[::-1][:errors], start=1):
        picks.append((f"error_{i}", str(vid)))
    return picks
