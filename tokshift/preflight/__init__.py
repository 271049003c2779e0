"""Before the queue: short jobs of every job shape that prove the cluster path and price the zoo."""
