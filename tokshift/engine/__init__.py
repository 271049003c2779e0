"""Training, exact multi-view evaluation and inference for the TokShift zoo.

Exit codes of `tokshift train` and `evaluate`: 0 done; 2 bad input; 3 the loss diverged
(NaN/inf); 4 another live run holds the output folder; 5 (evaluate) too many unreadable
videos; 75 (EX_TEMPFAIL) stopped by SIGTERM/SIGUSR1 after saving a resume checkpoint:
rerun the same command to continue.
"""

from tokshift.engine.exitcodes import EXIT_BUSY, EXIT_DIVERGED, EXIT_OK, EXIT_PREEMPTED, EXIT_UNREADABLE, EXIT_USAGE

__all__ = ["EXIT_BUSY", "EXIT_DIVERGED", "EXIT_OK", "EXIT_PREEMPTED", "EXIT_UNREADABLE", "EXIT_USAGE"]
