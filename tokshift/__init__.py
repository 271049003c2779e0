"""TokShift video transformer: model zoo, data pipeline, training and 30-view evaluation."""

__version__ = "0.1.0"
