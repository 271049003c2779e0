"""What the Snakemake workflow needs from Python: command-line config values turned into
the schema's types (cli_values), checks and lookups over the config (config), and each
job's threads, resources and launcher (scheduling), which records the fetch rules wait
for (fetch), and that the plan and every job run the checkout's own code (running_code).
The schema and its defaults live below this layer, in tokshift.settings.

Kept free of torch and timm so that `snakemake` plans and `tokshift --help` start fast.
"""
