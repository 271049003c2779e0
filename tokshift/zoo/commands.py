"""`tokshift zoo`: list the model zoo with parameters and GFLOPs computed from the models.

Beside them, each entry's reference layout (GPUs, per-GPU batch, gradient accumulation, global
batch): what its learning rate is set for, and the GPUs a Kinetics-400 training job asks for by
default (`gpus: auto`; the demo entries run on the CPU).
"""

from __future__ import annotations

import argparse
import csv
import sys

from tokshift.argtypes import add_command
from tokshift.errors import BadInput
from tokshift.zoo import ZOO, zoo_names


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "zoo",
        help="list the model zoo: params and GFLOPs/view computed from the models, reference GPUs and batch",
    )
    p.add_argument("--format", choices=("table", "csv"), default="table", help="output format")
    p.add_argument("--dataset", default=None, help="only entries of this zoo dataset: k400 or demo (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = zoo_names(args.dataset)
    if not names:
        known = sorted({c.dataset for c in ZOO.values()})
        raise BadInput(f"--dataset {args.dataset!r}: no zoo entries; the zoo's datasets are {', '.join(known)}")
    from tokshift.flops import ZOO_COLUMNS, zoo_row  # builds models: torch only when the command runs

    rows = [zoo_row(n) for n in names]
    if args.format == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=list(ZOO_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        return 0
    cells = [[str("" if r[c] is None else r[c]) for c in ZOO_COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(ZOO_COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(ZOO_COLUMNS, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return 0
