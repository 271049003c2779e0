"""`python -m tokshift ...`: the CLI of the package this interpreter imports.

The workflow's rules start commands this way, with the checkout first on PYTHONPATH, so a job
runs the checkout's code rather than whichever `tokshift` script the environment installed.
"""

from tokshift.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
