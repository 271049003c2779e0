"""What a model-index.yml must hold, and the check that it says what model_zoo.csv says.

Shared by the unit tests (tests/test_results.py) and the end-to-end demo run, so both hold
the file written by `tokshift collect` to the same schema and the same value-by-value check.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml


def model_index_schema(released: bool) -> dict[str, Any]:
    """The JSON schema of model-index.yml: what every entry needs, and what a trained one adds."""
    metadata_keys = ["Architecture", "FLOPs", "Parameters", "Resolution", "Frames"]
    model_keys = ["Name", "In Collection", "Config", "Metadata", "Results", "Weights"]
    if not released:
        metadata_keys += ["Batch Size", "Epochs", "Training Resources", "Training Data"]
        model_keys += ["Training Log"]
    count = {"type": "integer", "minimum": 1}
    accuracy = {"type": "number", "minimum": 0, "maximum": 100}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["Collections", "Models"],
        "additionalProperties": False,
        "properties": {
            "Collections": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["Name", "Paper"],
                    "not": {"required": ["Code"]},
                    "properties": {
                        "Name": {"const": "TokShift"},
                        "Paper": {
                            "type": "object",
                            "required": ["Title", "URL"],
                            "properties": {
                                "Title": {"const": "Token Shift Transformer for Video Classification"},
                                "URL": {"type": "string", "pattern": "^https://"},
                            },
                        },
                    },
                },
            },
            "Models": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": model_keys,
                    # A released checkpoint has no training log of ours.
                    **({"not": {"required": ["Training Log"]}} if released else {}),
                    "properties": {
                        "Name": {"type": "string", "minLength": 1},
                        "In Collection": {"const": "TokShift"},
                        "Config": {"type": "string", "minLength": 1},
                        "Metadata": {
                            "type": "object",
                            "required": metadata_keys,
                            "properties": {
                                "FLOPs": count,
                                "Parameters": count,
                                "Batch Size": count,
                                "Epochs": count,
                                "Frames": count,
                                "Resolution": {"type": "string", "pattern": r"^\d+x\d+$"},
                                "Training Resources": {"type": "string", "pattern": r"^(CPU|\d+ GPUs?( \(.+\))?)$"},
                                "Training Data": {"type": "string", "minLength": 1},
                                "Architecture": {"type": "string", "minLength": 1},
                            },
                        },
                        "Results": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["Task", "Dataset", "Metrics"],
                                "additionalProperties": False,
                                "properties": {
                                    "Task": {"const": "Action Recognition"},
                                    "Dataset": {"type": "string", "minLength": 1},
                                    "Metrics": {
                                        "type": "object",
                                        "required": ["Top 1 Accuracy", "Top 5 Accuracy"],
                                        "additionalProperties": False,
                                        "properties": {"Top 1 Accuracy": accuracy, "Top 5 Accuracy": accuracy},
                                    },
                                },
                            },
                        },
                        "Weights": {"type": "string", "minLength": 1},
                        "Training Log": {"type": "string", "pattern": r"metrics\.jsonl$"},
                    },
                },
            },
        },
    }


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_model_index(index_file: Path, csv_file: Path, dataset: str, released: bool = False) -> dict[str, Any]:
    """Validate ``index_file`` against the schema and compare it with ``csv_file`` cell by cell; return it."""
    import jsonschema
    import pandas as pd

    index = yaml.safe_load(Path(index_file).read_text(encoding="utf-8"))
    jsonschema.validate(index, model_index_schema(released))
    table = pd.read_csv(csv_file)
    entries = index["Models"]
    assert [m["Name"] for m in entries] == list(table["model"]), "one entry per table row, in its order"
    for entry, row in zip(entries, table.to_dict(orient="records")):
        name, meta, (result,) = entry["Name"], entry["Metadata"], entry["Results"]
        assert entry["Config"] == row["model"], name
        assert result["Dataset"] == dataset, name
        assert result["Metrics"] == {"Top 1 Accuracy": row["top1"], "Top 5 Accuracy": row["top5"]}, name
        assert meta["FLOPs"] == round(row["gflops_per_view"] * 1e9), name
        assert meta["Parameters"] == round(row["params_m"] * 1e6), name
        assert meta["Resolution"] == f"{row['img_size']}x{row['img_size']}", name
        assert (meta["Frames"], meta["Architecture"]) == (row["num_frames"], row["arch"]), name
        # A cell the table lacks is left out of the index, never filled in.
        for key, column in (("Epochs", "epochs"), ("Batch Size", "global_batch")):
            if _missing(row[column]):
                assert key not in meta, (name, key)
            else:
                assert meta[key] == row[column], (name, key)
        if released:
            assert entry["Weights"] == row["checkpoint_source"], name
            assert "Training Resources" not in meta and "Training Data" not in meta, name
        else:
            assert entry["Weights"] == row["checkpoint"], name
            assert entry["Training Log"] == str(Path(row["checkpoint"]).with_name("metrics.jsonl")), name
            assert meta["Training Data"] == dataset, name
            gpus = int(row["gpus"])
            resources = meta["Training Resources"]
            assert (resources == "CPU") if gpus == 0 else resources.startswith(f"{gpus} GPU"), (name, resources)
    return index
