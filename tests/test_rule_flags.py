"""Every flag a rule passes is an option of the `tokshift` command it calls.

The rules spell their command lines in `shell:` and pass only values in `params:`, so the
text of rules/*.smk shows every flag; these tests read it (no Snakemake run) and check each
flag against the parser of `tokshift` (`tokshift.cli.build_parser`): a renamed or removed
option fails here, not in a job hours into a run.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tokshift.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((REPO / "rules").glob("*.smk"))

_RULE = re.compile(r"^(?P<indent>\s*)(?:rule|checkpoint) (?P<name>\w+):\s*$")
_DIRECTIVE = re.compile(r"^(?P<indent>\s*)(?P<name>\w+):(?P<rest>.*)$")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
# The launcher (scheduling.launcher) starts `tokshift` through the job-step script, torchrun or srun.
_LAUNCH = "{params.launch}"
# Every command runs the checkout's package (tokshift.workflow.running_code), never an installed script.
_COMMAND = ["python", "-m", "tokshift"]


@dataclass
class Rule:
    name: str
    source: str  # rules/<file>.smk
    directives: dict[str, str] = field(default_factory=dict)  # directive -> its text (first line and body)

    @property
    def shell(self) -> str | None:
        """The shell command: the rule's adjacent string literals joined."""
        text = self.directives.get("shell")
        return None if text is None else ast.literal_eval(f"({text}\n)")

    @property
    def params(self) -> dict[str, ast.expr]:
        """Each `params:` entry's expression."""
        text = self.directives.get("params")
        if text is None:
            return {}
        call = ast.parse(f"dict(\n{text}\n)", mode="eval").body
        assert isinstance(call, ast.Call)
        return {kw.arg: kw.value for kw in call.keywords if kw.arg}


def parse_rules(text: str, source: str) -> list[Rule]:
    """The rules and checkpoints of a .smk text with their directives (by indentation)."""
    rules: list[Rule] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _RULE.match(lines[i])
        i += 1
        if not m:
            continue
        rule = Rule(m["name"], source)
        rule_indent = len(m["indent"])
        directive, body_indent = None, None
        while i < len(lines):
            line = lines[i]
            if line.strip() and len(line) - len(line.lstrip()) <= rule_indent:
                break
            d = _DIRECTIVE.match(line)
            if line.strip() and d and (body_indent is None or len(d["indent"]) == body_indent):
                body_indent = len(d["indent"])
                directive = d["name"]
                rule.directives[directive] = d["rest"].strip()
            elif directive is not None:
                rule.directives[directive] += "\n" + line
            i += 1
        rules.append(rule)
    return rules


def workflow_rules() -> list[Rule]:
    return [r for f in RULE_FILES for r in parse_rules(f.read_text(), f"rules/{f.name}")]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("tokshift has no sub-commands")


def _check_options(
    tokens: list[str], parser: argparse.ArgumentParser, where: str, stop_at_value: bool
) -> tuple[list[str], set[argparse.Action], int]:
    """Problems with the options in `tokens`, the actions they name, and where the first value that no
    option takes stands (the sub-command, when `stop_at_value`)."""
    problems: list[str] = []
    seen: set[argparse.Action] = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("-"):
            if stop_at_value:
                return problems, seen, i
            i += 1  # a positional argument, or a further value of a many-valued option
            continue
        flag, has_equals, _ = token.partition("=")
        action = parser._option_string_actions.get(flag)
        if action is None:
            known = ", ".join(sorted(parser._option_string_actions))
            problems.append(f"{where}: {flag} is no option (options: {known})")
            i += 1
            continue
        seen.add(action)
        i += 1
        takes_value = action.nargs != 0
        if not takes_value and (has_equals or (i < len(tokens) and not tokens[i].startswith("-"))):
            problems.append(f"{where}: {flag} takes no value, but the rule passes one")
        if takes_value and not has_equals:
            if action.nargs in (None, "?") or isinstance(action.nargs, int):
                count = 1 if action.nargs in (None, "?") else action.nargs
                values = tokens[i : i + count]
                if action.nargs is None and (len(values) < count or any(v.startswith("-") for v in values)):
                    problems.append(f"{where}: {flag} needs a value")
                if action.nargs == "?" and values and values[0].startswith("-"):
                    values = []
                i += len(values)
                if action.choices is not None:
                    problems += [
                        f"{where}: {flag} {v}: not one of {', '.join(map(str, action.choices))}"
                        for v in values
                        if "VALUE" not in v and v not in {str(c) for c in action.choices}
                    ]
    return problems, seen, len(tokens)


def check_rule(rule: Rule, parser: argparse.ArgumentParser) -> list[str]:
    """Why `rule`'s shell line does not fit the `tokshift` command it calls, or []."""
    where = f"{rule.source}: rule {rule.name}"
    shell = rule.shell
    assert shell is not None
    problems: list[str] = []
    names = set(rule.params)
    used = set(re.findall(r"\{params\.(\w+)(?::\w+)?\}", shell))
    problems += [f"{where}: shell uses {{params.{n}}}, which params does not define" for n in sorted(used - names)]
    problems += [f"{where}: params.{n} is not in the shell line" for n in sorted(names - used)]
    problems += [f"{where}: params.{n} holds a flag ({msg})" for n, msg in _flag_values(rule.params)]
    command = shell.replace(_LAUNCH, " ".join(_COMMAND)).split(" > ", 1)[0]
    tokens = shlex.split(_PLACEHOLDER.sub("VALUE", command))
    if tokens[: len(_COMMAND)] != _COMMAND:
        return [*problems, f"{where}: the shell line does not start `python -m tokshift`: {shell!r}"]
    tokens = tokens[len(_COMMAND) - 1 :]
    global_problems, _, at = _check_options(tokens[1:], parser, f"{where}: tokshift", stop_at_value=True)
    problems += global_problems
    rest = tokens[1 + at :]
    commands = _subcommands(parser)
    if not rest or rest[0] not in commands:
        return [*problems, f"{where}: {rest[:1]} is no tokshift sub-command ({', '.join(commands)})"]
    sub = commands[rest[0]]
    sub_problems, seen, _ = _check_options(rest[1:], sub, f"{where}: tokshift {rest[0]}", stop_at_value=False)
    problems += sub_problems
    for action in sub._actions:
        if action.required and action.option_strings and action not in seen:
            problems.append(f"{where}: tokshift {rest[0]} requires {action.option_strings[0]}, which the rule omits")
    return problems


def _flag_values(params: dict[str, ast.expr]) -> list[tuple[str, str]]:
    """(param, text) for each string in a params expression that starts with `--`: a flag hidden in a value."""
    out = []
    for name, expr in params.items():
        for node in ast.walk(expr):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                text = str(node.values[0].value)
            if text is not None and text.lstrip().startswith("--"):
                out.append((name, repr(text)))
    return out


RULES = [r for r in workflow_rules() if r.shell is not None]


def test_every_rule_with_a_command_is_read() -> None:
    """The reader finds every rule and each rule's shell line (so the checks below cover them all)."""
    found = {r.name for r in workflow_rules()}
    expected = {
        "train",
        "evaluate",
        "evaluate_released",
        "download_weights",
        "fetch_released",
        "import_released",
        "collect_released",
        "collect_results",
        "demo_videos",
        "index_dataset",
        "pack_shard",
        "summarize_frames",
        "per_class",
        "training_curves",
        "explain_examples",
        "cvdf_part_list",
        "cvdf_annotations",
        "fetch_part",
        "cvdf_replacement",
    }
    assert expected <= found, sorted(expected - found)
    assert {r.name for r in RULES} == found - {"all"}


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_rule_passes_only_options_of_its_command(rule: Rule) -> None:
    assert check_rule(rule, build_parser()) == []


def test_train_records_every_attempt_under_logs() -> None:
    """The training is resubmitted after a preemption: each attempt goes to one attempts log per model."""
    (train,) = [r for r in RULES if r.name == "train"]
    assert "{params.launch} --attempts-log {params.attempts_log:q} train " in train.shell
    assert ast.unparse(train.params["attempts_log"]) == "attempts_log('train')"


def test_sized_rules_record_their_attempts_and_size_retries_from_them() -> None:
    """Packing, training and both evaluations append every attempt to their attempts log, and their
    resources are the functions that read it (a retry after bad input asks for almost nothing)."""
    for name in ("pack_shard", "train", "evaluate", "evaluate_released"):
        (rule,) = [r for r in RULES if r.name == name]
        assert "--attempts-log {params.attempts_log:q} " in rule.shell, name
        assert ast.unparse(rule.params["attempts_log"]) == f"attempts_log('{name}')", name
        assert rule.directives["resources"].split() == [f'**rule_resources("{name}"),'], name


def test_evaluations_pass_every_view_setting() -> None:
    """Trained and released models are evaluated with the same settings, each spelt on the command line."""
    for name in ("evaluate", "evaluate_released"):
        (rule,) = [r for r in RULES if r.name == name]
        for key in ("clips", "crops", "resize", "view_batch", "max_failed_share", "workers", "amp"):
            flag = "--" + key.replace("_", "-")
            assert f"{flag} {{params.{key}}}" in rule.shell, (name, flag)
            assert ast.unparse(rule.params[key]) == f"config['evaluate']['{key}']", (name, key)
        assert "--faithful {params.faithful} --amp {params.amp}" in rule.shell, name
        assert ast.unparse(rule.params["faithful"]) == "str(config['evaluate']['faithful']).lower()", name


BROKEN = """
rule broken:
    params:
        extra="--secret 1",
        named=lambda wildcards: f"--clips {wildcards.n}",
        unused=3,
    shell:
        "python -m tokshift evaluate --checkpoint {input:q} --no-such-flag 1 --crops 2 --resize nearest"
        " --no-fused-attn yes {params.extra} {params.named} > {log:q} 2>&1"
"""


def test_the_check_reports_each_kind_of_mistake() -> None:
    (rule,) = parse_rules(BROKEN, "rules/broken.smk")
    problems = "\n".join(check_rule(rule, build_parser()))
    assert "--no-such-flag is no option" in problems
    assert "--crops 2: not one of 1, 3" in problems
    assert "--resize nearest: not one of linear, bicubic" in problems
    assert "--no-fused-attn takes no value" in problems
    assert "params.extra holds a flag" in problems and "params.named holds a flag" in problems
    assert "params.unused is not in the shell line" in problems
    assert "requires --shards, which the rule omits" in problems
    # The installed console script may be another copy of the code than the checkout's.
    (script,) = parse_rules('rule script:\n    shell:\n        "tokshift zoo > {log:q} 2>&1"\n', "rules/s.smk")
    assert "does not start `python -m tokshift`" in "\n".join(check_rule(script, build_parser()))
