"""Training, exact multi-view evaluation and inference for the TokShift zoo.

Their exit codes are the ones every command shares (`tokshift.errors.ExitCode`): a preempted
training exits RETRY_LATER (75) after saving a resume checkpoint, and a rerun continues it.
"""
