#!/usr/bin/env bash
# Runs inside the new conda environment (snakemake --software-deployment-method conda).
# Snakemake copies this script to .snakemake/conda/ in the working directory, the
# repository root, so the project is two levels up from it.
set -euo pipefail
pip install --no-deps "$(dirname "$0")/../.."
