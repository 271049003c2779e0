"""The model-zoo table: collected from the per-model output files (`table`), written as CSV,
markdown, a plot, a sources file and a model index (`render`). pandas and matplotlib load on first use."""

from tokshift.results.render import (
    model_index,
    model_index_path,
    plot_accuracy_vs_gflops,
    sources_path,
    to_markdown,
    write_outputs,
)
from tokshift.results.table import (
    COLUMN_SOURCES,
    COLUMNS,
    MissingResultError,
    ResultsError,
    collect,
    collect_released,
)

__all__ = [
    "COLUMNS",
    "COLUMN_SOURCES",
    "MissingResultError",
    "ResultsError",
    "collect",
    "collect_released",
    "model_index",
    "model_index_path",
    "plot_accuracy_vs_gflops",
    "sources_path",
    "to_markdown",
    "write_outputs",
]
