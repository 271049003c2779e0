"""What the Snakemake workflow needs from Python: the config schema and its defaults.

Kept free of torch and timm so that `snakemake` plans and `tokshift --help` start fast.
"""
