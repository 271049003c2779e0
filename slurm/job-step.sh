#!/usr/bin/env bash
# job-step.sh -- run a rule's program as its own SLURM job step, or directly outside SLURM.
#
#   slurm/job-step.sh --ntasks N --nodes M --cpus-per-task C -- COMMAND [ARGS...]
#
# Why: with the SLURM executor, Snakemake itself runs in the job's batch script. SLURM's
# early warning (`--signal=USR1@<seconds>`, set from resources.train.signal_seconds) goes
# to the job's *steps* only, so the training must run in a step of its own: then the
# signal reaches the training processes (which save a resume checkpoint and exit 75) and
# never the Snakemake processes that report the failure and resubmit the job.
#
# - Outside a SLURM job (no SLURM_JOB_ID): runs COMMAND directly; the options are ignored.
# - In a job's batch script: `srun --kill-on-bad-exit=1 --ntasks=N --nodes=M --cpus-per-task=C`
#   starts N copies of COMMAND (one per task; with N > 1 each reads its rank from SLURM_PROCID/SLURM_NTASKS).
#   The step gets all of the job's GPUs and memory; CPUs per task must be given because
#   srun does not inherit them from the job (Slurm >= 22.05).
# - Inside a step: SIGUSR1 is ignored before COMMAND starts, so a signal that comes while a
#   program is still starting up does no harm; programs that handle it (tokshift train)
#   install their own handler, launchers that do not (torchrun) keep running and wait for
#   their workers to checkpoint and exit.
set -euo pipefail

usage() { echo "usage: $0 [--ntasks N] [--nodes M] [--cpus-per-task C] -- COMMAND [ARGS...]" >&2; exit 2; }

ntasks=1 nodes=1 cpus=1
while (($#)); do
  case $1 in
    --ntasks) ntasks=${2:?--ntasks needs a value}; shift 2 ;;
    --nodes) nodes=${2:?--nodes needs a value}; shift 2 ;;
    --cpus-per-task) cpus=${2:?--cpus-per-task needs a value}; shift 2 ;;
    --) shift; break ;;
    *) echo "$0: unknown option '$1'" >&2; usage ;;
  esac
done
(($#)) || usage
for v in "$ntasks" "$nodes" "$cpus"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "$0: task, node and CPU counts must be positive integers, got '$v'" >&2; exit 2; }
done

if [[ -z ${SLURM_JOB_ID:-} ]]; then
  exec "$@"
fi
if [[ -n ${SLURM_STEP_ID:-} && ${SLURM_STEP_ID} != batch ]]; then
  trap '' USR1
  exec "$@"
fi
command -v srun >/dev/null || { echo "$0: inside SLURM job $SLURM_JOB_ID but srun is not on PATH" >&2; exit 127; }
# --kill-on-bad-exit=1: a task that exits non-zero (a rank that ran out of memory or met a damaged
# shard) ends the whole step at once, instead of leaving the other ranks waiting in their next
# collective until its timeout. It never cuts a checkpoint short: after a signal only rank 0
# exits 75, and only once the resume checkpoint is on disk; the other ranks wait for it and exit 0.
step=(srun --kill-on-bad-exit=1 --ntasks="$ntasks" --nodes="$nodes" --cpus-per-task="$cpus")
echo "$0: ${step[*]} -- $*" >&2  # the rule's log shows how the step was started
exec "${step[@]}" bash "${BASH_SOURCE[0]}" -- "$@"
