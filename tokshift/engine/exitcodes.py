"""Exit codes of `tokshift train`, `evaluate` and `predict`, kept free of heavy imports so the
CLI parser (and its help) can name them without loading torch."""

EXIT_OK = 0
EXIT_USAGE = 2  # bad input: the message names it
EXIT_DIVERGED = 3  # NaN/inf loss; the last good resume checkpoint is kept
EXIT_BUSY = 4  # another live run holds the output folder's lock (tokshift.engine.folder_lock)
EXIT_UNREADABLE = 5  # evaluation: more videos than --max-failed-share could not be read
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint saved after SIGTERM/SIGUSR1, rerun to resume
