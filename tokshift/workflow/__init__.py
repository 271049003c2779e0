"""What the Snakemake workflow needs from Python: the config schema and its defaults
(schema), command-line config values (cli_values), checks and lookups over the config
(config), and each job's threads, resources and launcher (scheduling).

Kept free of torch and timm so that `snakemake` plans and `tokshift --help` start fast.
"""
