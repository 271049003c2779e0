"""Checks and lookups over the pipeline's config.yaml that the JSON schema cannot express.

The schema (tokshift/config.schema.yaml, read by tokshift.settings) rejects unknown keys and wrong types and
fills in every default; this module rejects what needs the zoo or the file system: unknown
model names, training overrides that do not fit a zoo entry, and dataset paths that do not
exist. Everything here runs before any job starts, and every message names the config key.

The functions take the config as validated against the schema (defaults filled in), so
none of them carries a default value of its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tokshift.errors import BadInput
from tokshift.settings import load_schema
from tokshift.zoo import ZOO, ZooConfig, get_config, zoo_names
from tokshift.zoo.jobs import CPU_JOB_MINUTES, limit_minutes, zoo_job


class ConfigError(BadInput):
    """config.yaml names something that does not exist or does not fit."""


def dataset_spec(config: dict[str, Any]) -> dict[str, Any]:
    name = config["dataset"]
    if name not in config["datasets"]:
        raise ConfigError(
            f"config key 'dataset': {name!r} is not an entry of 'datasets' (entries: {', '.join(config['datasets'])})"
        )
    return config["datasets"][name]


def selected_models(config: dict[str, Any]) -> list[str]:
    """The zoo names to run: `models: all` means every entry of the dataset's zoo."""
    spec = dataset_spec(config)
    models = config["models"]
    if models == "all":
        names = zoo_names(spec["zoo"])
        if not names:
            raise ConfigError(
                f"config key 'datasets.{config['dataset']}.zoo': no zoo entries for {spec['zoo']!r} "
                f"(zoos: {', '.join(sorted({c.dataset for c in ZOO.values()}))})"
            )
        return names
    if isinstance(models, str):
        models = [models]
    unknown = [m for m in models if m not in ZOO]
    if unknown:
        raise ConfigError(f"config key 'models': unknown model(s) {unknown}; `tokshift zoo` lists the known ones")
    return list(models)


def frames_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Global `frames` settings with the dataset entry's own `frames` on top."""
    out = dict(config["frames"])
    out.update(dataset_spec(config).get("frames") or {})
    return out


def _override_layers(config: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """Zoo-field changes for `model`, weakest first: the dataset's recipe, `train.overrides`, `train.per_model`."""
    train = config["train"]
    return [dataset_spec(config).get("train") or {}, train["overrides"], train["per_model"].get(model) or {}]


def model_config(config: dict[str, Any], model: str) -> ZooConfig:
    """The zoo entry with the dataset's `train` recipe, `train.overrides` and `train.per_model[model]` applied."""
    overrides: dict[str, Any] = {}
    for layer in _override_layers(config, model):
        overrides.update(layer)
    try:
        return get_config(model).replace(**overrides)
    except ValueError as e:
        raise ConfigError(
            f"config keys 'datasets.{config['dataset']}.train' / 'train.overrides' / 'train.per_model.{model}': {e}"
        ) from None


def training_overrides(config: dict[str, Any], model: str) -> dict[str, Any]:
    """The overridden zoo fields of `model`, with the types of the zoo (command-line values are strings)."""
    keys = set().union(*_override_layers(config, model))
    cfg = model_config(config, model)
    return {k: (list(v) if isinstance(v := getattr(cfg, k), tuple) else v) for k in sorted(keys)}


def init_from(config: dict[str, Any], model: str) -> str | None:
    """The checkpoint `model` starts from instead of its ImageNet-21k weights, or None.

    `train.init_from_per_model[model]` wins over `train.init_from`; relative paths are
    relative to the pipeline directory (where Snakemake runs).
    """
    train = config["train"]
    return train["init_from_per_model"].get(model) or train["init_from"]


def job_settings(config: dict[str, Any], rule: str, model: str | None = None) -> dict[str, Any]:
    """`resources.<rule>` with `resources.per_model.<model>.<rule>` on top; `zoo` and `auto` resolved.

    `gpus: auto` and `runtime: auto` take the zoo entry's job size (tokshift.zoo.jobs): its
    reference GPUs and a time limit from its estimate for a Kinetics-400 entry, a CPU job for the
    demo. Without a model (packing) `auto` is a CPU job.
    """
    res = config["resources"]
    out = dict(res[rule])
    if model is not None:
        out.update((res["per_model"].get(model) or {}).get(rule) or {})
    job = zoo_job(get_config(model)) if model is not None else None
    if out["gpus"] == "zoo":
        out["gpus"] = get_config(model).gpus if model is not None else 0
    elif out["gpus"] == "auto":
        out["gpus"] = job.gpus if job is not None else 0
    if out["runtime"] == "preflight":
        projected = projected_hours(config, rule, model) if model is not None else None
        out["runtime"] = limit_minutes(projected) if projected is not None else "auto"
    if out["runtime"] == "auto":
        out["runtime"] = getattr(job, f"{rule}_runtime") if job is not None else CPU_JOB_MINUTES
    return out


def preflight_runtime_notes(config: dict[str, Any], models: list[str]) -> list[str]:
    """One line per job whose `runtime: preflight` has no projection on record (it then takes `auto`'s)."""
    lines = []
    for rule in ("train", "evaluate"):
        for model in models:
            res = config["resources"]
            setting = ((res["per_model"].get(model) or {}).get(rule) or {}).get("runtime", res[rule]["runtime"])
            if setting == "preflight" and projected_hours(config, rule, model) is None:
                minutes = job_settings(config, rule, model)["runtime"]
                lines.append(
                    f"config: resources.{rule}.runtime=preflight: {preflight_report_path(config)} has no projection "
                    f"of {model}; its {rule} job gets the zoo's estimate ({minutes} min). "
                    "Run `snakemake preflight` first"
                )
    return lines


def preflight_urls(config: dict[str, Any], models: list[str]) -> list[str]:
    """`KEY=URL` of each download the run still needs (its file not in place yet), for the preflight to try."""
    urls: dict[str, str] = {}
    if released_mode(config):
        for model in models:
            source = str(released_entry(config, model)["source"])
            if is_url(source) and not Path(f"resources/released/{model}.pth").is_file():
                urls[f"released.{model}.source"] = source
    else:
        for model in models:
            backbone = get_config(model).imagenet_weights
            if backbone and not init_from(config, model) and not Path(f"resources/weights/{backbone}.npz").is_file():
                urls[f"weights.{backbone}.url"] = config["weights"][backbone]["url"]
    cvdf = cvdf_settings(config)
    if cvdf is not None:
        name = config["dataset"]
        for group in ("lists", "annotations"):
            for split, url in cvdf[group].items():
                urls[f"datasets.{name}.cvdf.{group}.{split}"] = url
        urls[f"datasets.{name}.cvdf.replacement"] = cvdf["replacement"]
    return [f"{key}={url}" for key, url in urls.items()]


def preflight_report_path(config: dict[str, Any]) -> Path:
    """Where `snakemake preflight` writes its report (relative to the pipeline directory)."""
    return Path("results") / config["dataset"] / "preflight.json"


def projected_hours(config: dict[str, Any], rule: str, model: str) -> float | None:
    """The preflight's projected hours of `model`'s train or evaluate job; None when none is on record."""
    import json

    path = preflight_report_path(config)
    try:
        prices = json.loads(path.read_text(encoding="utf-8")).get("prices") or []
    except (OSError, ValueError):
        return None
    for price in prices:
        if price.get("model") == model:
            return price.get(f"{rule}_hours")
    return None


def _layer_pairs(config: dict[str, Any], models: list[str]) -> list[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    """(weaker key, its settings, stronger key, its settings) for every place one setting overrides another."""
    name = config["dataset"]
    spec = config["datasets"][name]
    train, res = config["train"], config["resources"]
    pairs = [("frames", config["frames"], f"datasets.{name}.frames", spec.get("frames") or {})]
    recipe = spec.get("train") or {}
    pairs.append((f"datasets.{name}.train", recipe, "train.overrides", train["overrides"]))
    for m in models:
        per_model = train["per_model"].get(m) or {}
        pairs.append(("train.overrides", train["overrides"], f"train.per_model.{m}", per_model))
        pairs.append((f"datasets.{name}.train", recipe, f"train.per_model.{m}", per_model))
        if m in train["init_from_per_model"]:  # a model's own start wins over train.init_from
            start = train["init_from_per_model"][m]
            pairs.append(("train", train, f"train.init_from_per_model.{m}", {"init_from": start}))
        for rule in ("train", "evaluate"):
            own = (res["per_model"].get(m) or {}).get(rule) or {}
            pairs.append((f"resources.{rule}", res[rule], f"resources.per_model.{m}.{rule}", own))
    return pairs


def _given(command_line: dict[str, Any], dotted: str) -> dict[str, Any]:
    node: Any = command_line
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def shadowed_settings(config: dict[str, Any], command_line: dict[str, Any]) -> list[str]:
    """One line per setting given on the command line (`--config`) that a more specific setting overrides.

    `--config 'frames={shards: 4}'` does nothing for a dataset whose entry sets its own `frames.shards`;
    the plan says so in its first lines instead of running with the value the user did not ask for.
    """
    lines = []
    for weak_key, weak, strong_key, strong in _layer_pairs(config, selected_models(config)):
        for key in _given(command_line, weak_key):
            if weak_key == "train" and key != "init_from":
                continue
            if key not in strong or strong[key] == weak.get(key):
                continue
            per_model_start = strong_key.startswith("train.init_from_per_model.")
            winner = strong_key if per_model_start else f"{strong_key}.{key}"
            lines.append(
                f"config: {weak_key}.{key}={weak.get(key)!r} from the command line is overridden by the more "
                f"specific {winner}={strong[key]!r}; set that key instead"
            )
    return lines


def cvdf_settings(config: dict[str, Any]) -> dict[str, Any] | None:
    """The dataset's `cvdf` settings over the schema's defaults when it says `fetch: cvdf`, else None.

    `download_dir` left at null becomes `<root>/cvdf`.
    """
    spec = dataset_spec(config)
    if spec["kind"] != "kinetics" or spec.get("fetch") != "cvdf":
        return None
    props = load_schema()["$defs"]["cvdf"]["properties"]
    out = {k: v["default"] for k, v in props.items()}
    out.update(spec.get("cvdf") or {})
    if not out["download_dir"]:
        out["download_dir"] = f"{str(spec['root']).rstrip('/')}/cvdf"
    return out


def fetched_annotations(config: dict[str, Any], split: str) -> str:
    """Where the workflow puts the downloaded annotation CSV of `split`."""
    settings = cvdf_settings(config)
    assert settings is not None
    return f"{settings['download_dir']}/annotations/{split}.csv"


def index_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The dataset description `tokshift index` gets: a fetched dataset's annotations are the downloaded CSVs."""
    spec = dict(dataset_spec(config))
    if cvdf_settings(config) is not None:
        spec["annotations"] = {s: fetched_annotations(config, s) for s in ("train", "val")}
    return spec


def index_inputs(config: dict[str, Any], split: str) -> list[str]:
    """The annotation files the index of `split` is built from (so editing them re-indexes)."""
    spec = dataset_spec(config)
    kind = spec["kind"]
    if kind == "demo":
        return [f"{spec['root']}/{split}.csv"]
    if kind == "csv":
        return [spec["splits"][split]]
    if kind == "kinetics" and cvdf_settings(config) is not None:
        # Class order comes from the labels of every split, so each index waits for both downloads.
        return [fetched_annotations(config, s) for s in ("train", "val")]
    if kind == "kinetics":
        return [spec["annotations"][split]]
    return [spec["lists"][split]]


RELEASED = "released"


def released_mode(config: dict[str, Any]) -> bool:
    """`checkpoints: released`: evaluate the original's checkpoints, train nothing."""
    return config["checkpoints"] == RELEASED


def default_released_resize(config: dict[str, Any]) -> None:
    """Before validation: in released mode `evaluate.resize` defaults to bicubic (the original's Pillow
    resize) and `evaluate.faithful` to true (its decode, clip starts, portrait crops and fp32).

    Runs on the config as the user gave it, so an explicit setting is kept; the schema's own
    defaults (linear, fast) apply to trained models, and the schema is the one check of the values.
    """
    evaluate = config.get("evaluate")
    if config.get("checkpoints") != RELEASED and not (isinstance(evaluate, dict) and evaluate.get("faithful")):
        return
    evaluate = config.setdefault("evaluate", {})
    if isinstance(evaluate, dict):  # a faithful evaluation resizes as the original: bicubic
        evaluate.setdefault("resize", "bicubic")
        evaluate.setdefault("faithful", config.get("checkpoints") == RELEASED)


def is_url(source: str) -> bool:
    """A released source that the downloader fetches (anything else is a local path used in place)."""
    return source.split("://", 1)[0].lower() in ("http", "https", "file") and "://" in source


def released_entry(config: dict[str, Any], model: str) -> dict[str, Any]:
    """`released.<model>`: the source (URL or local path) and sha256 of its original checkpoint."""
    entry = config["released"].get(model)
    if entry is None:
        raise ConfigError(
            f"config key 'released.{model}': no entry; give the original checkpoint of {model} "
            "({source: <URL or path>, sha256: <hex or null>}) or leave the model out of 'models'"
        )
    return entry


def _check_released(config: dict[str, Any], models: list[str], base: Path) -> list[str]:
    problems = []
    for m in config["released"]:
        if m not in ZOO:
            problems.append(f"config key 'released': unknown model {m!r}")
    if not released_mode(config):
        return problems
    for m in models:
        try:
            source = released_entry(config, m)["source"]
        except ConfigError as e:
            problems.append(str(e))
            continue
        if not is_url(source):
            msg = _check_path(f"released.{m}.source", source, base)
            if msg:
                problems.append(msg + " (a local .pth is used in place; an http(s):// URL is downloaded)")
    return problems


def _check_zoo_matches_dataset(config: dict[str, Any], models: list[str]) -> list[str]:
    """A model of another zoo than the dataset's would train a recipe made for other videos.

    A K400 entry on the 4-class 64-px demo (or the reverse) is a slip of the command line;
    a dataset that means it says so with its own `zoo:` (fine-tuning K400 recipes on own videos).
    """
    name = config["dataset"]
    zoo = dataset_spec(config)["zoo"]
    problems = []
    for m in models:
        theirs = get_config(m).dataset
        if theirs == zoo:
            continue
        fitting = [n for n, d in config["datasets"].items() if d.get("zoo") == theirs]
        run_there = (
            f"--config dataset={fitting[0]}"
            if fitting
            else f"a datasets entry with zoo: {theirs} (config.yaml shows one, commented out) and --config dataset=<it>"
        )
        problems.append(
            f"config key 'models': {m} is an entry of the {theirs!r} zoo, but dataset {name!r} uses the {zoo!r} zoo"
            f" (datasets.{name}.zoo); run it with {run_there}, or set datasets.{name}.zoo: {theirs} to train"
            f" {theirs} recipes on {name} on purpose"
        )
    return problems


def _gpus_key(config: dict[str, Any], rule: str, model: str) -> str:
    """The config key that sets the GPUs of `model`'s `rule` job (for messages)."""
    per_model = (config["resources"]["per_model"].get(model) or {}).get(rule) or {}
    return f"resources.per_model.{model}.{rule}.gpus" if "gpus" in per_model else f"resources.{rule}.gpus"


def _check_gpu_training(config: dict[str, Any], models: list[str]) -> list[str]:
    """A zoo entry made for GPUs is not trained on CPUs unless the config says so.

    A Kinetics-400 training on CPUs takes months of queue time and looks like any other job.
    """
    if released_mode(config) or config["resources"]["allow_cpu_training"]:
        return []
    problems = []
    switch = "or set resources.allow_cpu_training: true to train on CPUs anyway"
    for m in models:
        reference = zoo_job(get_config(m)).gpus
        if not reference:
            continue
        if job_settings(config, "train", m)["gpus"] == 0:
            key = _gpus_key(config, "train", m)
            problems.append(
                f"config key '{key}': 0 GPUs for {m}, which trains on {reference} GPUs (its reference; `tokshift zoo`)"
                f" and would take months on CPUs; leave it at auto, give a GPU count, {switch}"
            )
        elif config["train"]["device"] == "cpu":
            problems.append(
                f"config key 'train.device': cpu would train {m} on the CPUs of its GPU jobs; set it to auto, {switch}"
            )
    return problems


def _slurm_extra_problem(key: str, extra: str, signal_seconds: int) -> str | None:
    """Flags of `slurm_extra` that the workflow sets itself, which sbatch would take twice."""
    if not extra:
        return None
    if "--signal" in extra and signal_seconds:
        return (
            f"config key '{key}': --signal is set by the workflow (--signal=USR1@<signal_seconds>: the checkpoint"
            " before the time limit); change resources.train.signal_seconds instead"
        )
    try:
        from snakemake_executor_plugin_slurm.validation import get_forbidden_slurm_options
    except ImportError:  # without the SLURM plugin nothing is submitted
        return None
    taken = [name for pattern, name in get_forbidden_slurm_options().items() if re.search(pattern, extra)]
    if taken:
        return (
            f"config key '{key}': {extra!r} sets the {', '.join(taken)}, which the workflow sets from the other"
            " resources keys (gpus, cpus, mem_mb, runtime, slurm_partition, ...); set those instead"
        )
    return None


def _check_slurm_extra(config: dict[str, Any], models: list[str]) -> list[str]:
    res = config["resources"]
    problems = []
    for rule in ("pack", "train", "evaluate"):
        jobs = [(f"resources.{rule}.slurm_extra", job_settings(config, rule))]
        if rule != "pack":
            jobs += [
                (f"resources.per_model.{m}.{rule}.slurm_extra", job_settings(config, rule, m))
                for m in models
                if "slurm_extra" in ((res["per_model"].get(m) or {}).get(rule) or {})
            ]
        for key, job in jobs:
            problem = _slurm_extra_problem(key, job["slurm_extra"], job["signal_seconds"] if rule == "train" else 0)
            if problem:
                problems.append(problem)
    return problems


def _check_path(key: str, value: str, base: Path) -> str | None:
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.exists():
        return f"config key '{key}': path {value!r} does not exist"
    return None


def check_config(config: dict[str, Any], base: Path = Path(".")) -> None:
    """Raise ConfigError listing every problem the schema cannot see."""
    problems: list[str] = []
    try:
        spec = dataset_spec(config)
        models = selected_models(config)
    except ConfigError as e:
        raise ConfigError(str(e)) from None
    for m in models:
        try:
            model_config(config, m)
        except ConfigError as e:
            problems.append(str(e))
    name = config["dataset"]
    kind = spec["kind"]
    path_keys: list[tuple[str, str]] = []
    if kind == "kinetics" and spec.get("fetch"):
        pass  # root and annotations are made by the fetch rules
    elif kind == "kinetics":
        path_keys += [(f"datasets.{name}.root", spec["root"])]
        path_keys += [(f"datasets.{name}.annotations.{s}", p) for s, p in spec["annotations"].items()]
    elif kind == "csv":
        path_keys += [(f"datasets.{name}.splits.{s}", p) for s, p in spec["splits"].items()]
    elif kind == "frames":
        path_keys += [(f"datasets.{name}.root", spec["root"])]
        path_keys += [(f"datasets.{name}.lists.{s}", p) for s, p in spec["lists"].items()]
        if spec.get("classes"):
            path_keys.append((f"datasets.{name}.classes", spec["classes"]))
    for key, value in path_keys:
        msg = _check_path(key, value, base)
        if msg:
            problems.append(msg)
    problems += _check_released(config, models, base)
    problems += _check_zoo_matches_dataset(config, models)
    if config["evaluate"]["faithful"] and config["evaluate"]["resize"] != "bicubic":
        problems.append(
            "config keys 'evaluate.faithful' / 'evaluate.resize': a faithful evaluation resizes as the original"
            " (bicubic); leave evaluate.resize out or set it to bicubic"
        )
    problems += _check_gpu_training(config, models)
    problems += _check_slurm_extra(config, models)
    for m in models:
        if released_mode(config):
            break  # nothing is trained: no starting weights needed
        start = init_from(config, m)
        if start:
            per_model = config["train"]["init_from_per_model"].get(m)
            key = f"train.init_from_per_model.{m}" if per_model else "train.init_from"
            if not (Path(start) if Path(start).is_absolute() else base / start).is_file():
                problems.append(
                    f"config key '{key}': {start!r} is not a file; give a model.pt, an original .pth or a .npz "
                    "(relative paths are relative to the pipeline directory)"
                )
            continue
        backbone = get_config(m).imagenet_weights
        if backbone and backbone not in config["weights"]:
            problems.append(f"config key 'weights': no entry for {backbone!r}, which {m} starts from")
    for m in config["resources"]["per_model"]:
        if m not in ZOO:
            problems.append(f"config key 'resources.per_model': unknown model {m!r}")
    for m in config["train"]["per_model"]:
        if m not in ZOO:
            problems.append(f"config key 'train.per_model': unknown model {m!r}")
    for m in config["train"]["init_from_per_model"]:
        if m not in ZOO:
            problems.append(f"config key 'train.init_from_per_model': unknown model {m!r}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
