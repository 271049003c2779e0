"""A job given GPUs runs on them or fails at once naming why (tokshift.engine.gpu_env).

The checks are fed a GPU job's environment and torch facts (the real torch of this machine, or
the facts of a GPU machine written out), so every cause is tested on a CPU-only machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tokshift.engine.gpu_env import (
    MIN_DRIVER,
    GpuUnusable,
    TorchFacts,
    choose_device,
    claimed_gpus,
    cuda_problem,
    describe_environment,
    driver_version,
    has_kernels,
    torch_facts,
)
from tokshift.engine.runtime import amp_choice, precision_line
from tokshift.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]
SLURM_GPU_JOB = {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_GPUS_ON_NODE": "2"}
PROC_TEXT = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    "GCC version:  gcc version 11.4.0 (Ubuntu 11.4.0-1ubuntu1~22.04)\n"
)
OPEN_PROC_TEXT = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.82.07  Release Build  (dvs-builder)\n"
H100 = TorchFacts(
    version="2.8.0+cu128",
    cuda="12.8",
    available=True,
    arch_list=("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
    names=("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"),
    capabilities=((9, 0), (9, 0)),
    memory=(85_045_526_528, 85_045_526_528),
    cudnn=91002,
    nccl="2.27.3",
)


def test_which_variables_claim_gpus() -> None:
    assert claimed_gpus({}) is None
    assert claimed_gpus({"CUDA_VISIBLE_DEVICES": "0"}) == "CUDA_VISIBLE_DEVICES=0"
    assert claimed_gpus(SLURM_GPU_JOB) == "CUDA_VISIBLE_DEVICES=0,1, SLURM_GPUS_ON_NODE=2"
    assert claimed_gpus({"SLURM_STEP_GPUS": "3"}) == "SLURM_STEP_GPUS=3"
    # Hidden on purpose: whoever set it meant this process to have no GPU, whatever SLURM counted.
    for hidden in ("", "-1", "NoDevFiles"):
        assert claimed_gpus({"CUDA_VISIBLE_DEVICES": hidden, "SLURM_GPUS_ON_NODE": "2"}) is None
    # A job's allocation or request is inherited by steps started without GPUs; containers set NVIDIA_*.
    assert claimed_gpus({"SLURM_JOB_GPUS": "0", "SLURM_GPUS_PER_NODE": "4", "NVIDIA_VISIBLE_DEVICES": "all"}) is None
    assert claimed_gpus({"SLURM_GPUS_ON_NODE": "0"}) is None


def test_driver_version_from_proc_and_nvidia_smi() -> None:
    assert driver_version(PROC_TEXT) == "535.104.05"
    assert driver_version(OPEN_PROC_TEXT) == "580.82.07"
    assert driver_version("550.54.15\n550.54.15\n") == "550.54.15"  # nvidia-smi, one line per GPU
    assert driver_version(None) is None and driver_version("garbage") is None


def test_kernels_of_a_build_and_the_gpus_they_run_on() -> None:
    assert has_kernels((8, 6), ["sm_80"])  # a cubin runs on later minors of its major
    assert not has_kernels((8, 0), ["sm_86"])
    assert not has_kernels((7, 0), ["sm_75", "sm_80", "sm_90"])  # V100 on a build without sm_70
    assert has_kernels((9, 0), ["sm_90a"]) and not has_kernels((10, 0), ["sm_90a"])
    assert has_kernels((10, 0), ["sm_80", "compute_90"])  # PTX is compiled for newer GPUs
    assert not has_kernels((8, 0), ["compute_90"])


def test_a_gpu_job_with_the_real_torch_of_a_machine_without_gpus_fails_naming_why() -> None:
    facts = torch_facts()
    if facts.available:
        pytest.skip("CUDA works on this machine; the tests below feed the facts of broken GPU machines")
    with pytest.raises(GpuUnusable) as info:
        choose_device("auto", 0, SLURM_GPU_JOB, facts, None)
    message = str(info.value)
    assert info.value.exit_code == ExitCode.NOT_RETRYABLE
    assert "this job was given GPUs (CUDA_VISIBLE_DEVICES=0,1, SLURM_GPUS_ON_NODE=2)" in message
    assert f"torch {torch.__version__}" in message and "--device cpu" in message
    if facts.cuda is None:
        assert "CPU-only build" in message
    else:
        assert facts.error and " ".join(facts.error.split()) in message  # torch's own words: no driver here
    assert "\n" not in message
    # The same machine without a claim: the CPU, and the log says why.
    device, why = choose_device("auto", 0, {"PATH": "/bin"}, facts, None)
    assert device.type == "cpu" and "given no GPU" in why
    # --device cpu always runs; the GPUs it leaves unused are named.
    device, why = choose_device("cpu", 0, SLURM_GPU_JOB, facts, None)
    assert device.type == "cpu" and "stay unused" in why
    with pytest.raises(GpuUnusable, match="--device cuda was given"):
        choose_device("cuda", 0, {}, facts, None)


def test_cpu_only_torch_names_the_wheel_index() -> None:
    cpu_only = TorchFacts(version="2.8.0+cpu", cuda=None)
    with pytest.raises(GpuUnusable) as info:
        choose_device("auto", 0, SLURM_GPU_JOB, cpu_only, PROC_TEXT)
    assert "torch 2.8.0+cpu is a CPU-only build" in str(info.value)
    assert "pip install torch --index-url https://download.pytorch.org/whl/cu" in str(info.value)
    assert "535.104.05" in str(info.value)


def test_a_driver_too_old_for_the_build_names_both_versions_and_the_minimum() -> None:
    cu130 = TorchFacts(version="2.14.1+cu130", cuda="13.0", error="The NVIDIA driver on your system is too old")
    problem = cuda_problem(cu130, PROC_TEXT)
    assert problem is not None
    assert "driver 535.104.05 is older than 580.65.06, the minimum for CUDA 13.x" in problem
    assert "CUDA 12.x needs >= 525.60.13" in problem and "whl/cu121" in problem
    assert cuda_problem(cu130, OPEN_PROC_TEXT) != problem  # 580.82.07 is new enough: another cause is named


def test_a_gpu_without_kernels_in_the_build_is_refused() -> None:
    v100 = TorchFacts(
        version="2.14.1+cu130",
        cuda="13.0",
        available=True,
        arch_list=("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
        names=("Tesla V100-SXM2-32GB",),
        capabilities=((7, 0),),
        memory=(34_089_730_048,),
    )
    with pytest.raises(GpuUnusable, match=r"GPU 0 \(Tesla V100-SXM2-32GB\) has compute capability 7\.0.*sm_70"):
        choose_device("auto", 0, SLURM_GPU_JOB, v100, "580.82.07\n")


def test_a_working_gpu_job_takes_the_local_ranks_gpu() -> None:
    device, why = choose_device("auto", 3, SLURM_GPU_JOB, H100, PROC_TEXT)
    assert device == torch.device("cuda", 1) and "local rank 3 takes GPU 1 of 2" in why


def test_amp_auto_takes_fp16_on_a_gpu_without_bf16_and_explicit_bf16_fails() -> None:
    gpu = torch.device("cuda", 0)  # a device object only: nothing touches CUDA
    assert amp_choice("auto", gpu, bf16_supported=True)[0] is torch.bfloat16
    dtype, why = amp_choice("auto", gpu, bf16_supported=False)
    assert dtype is torch.float16 and "no bf16" in why
    with pytest.raises(GpuUnusable, match="--amp bf16.*compute capability 8.0"):
        amp_choice("bf16", gpu, bf16_supported=False)
    assert amp_choice("auto", torch.device("cpu")) == (None, "fp32 (--amp auto on the CPU)")


def test_the_first_log_lines_describe_gpus_builds_and_precision() -> None:
    device, why = choose_device("auto", 0, SLURM_GPU_JOB, H100, PROC_TEXT)
    lines = describe_environment(H100, PROC_TEXT, device, why, precision_line("fp32 (--amp off)", device, True), "gpu7")
    text = "\n".join(lines)
    assert lines[0] == "host gpu7"
    assert "GPUs visible: 2 (0: NVIDIA H100 80GB HBM3, 79.2 GiB, compute capability 9.0; 1: " in text
    assert "NVIDIA driver: 535.104.05" in text
    assert "torch 2.8.0+cu128, CUDA build 12.8, cuDNN 91002, NCCL 2.27.3" in text
    assert "device cuda:0: --device auto, the job was given GPUs" in text
    assert "precision: fp32 (--amp off); TF32 for fp32 matmuls on" in text
    cpu_lines = describe_environment(torch_facts(), None, torch.device("cpu"), "--device cpu", "fp32", "laptop")
    assert any(re.fullmatch(r"CPU: \d+ torch threads", line) for line in cpu_lines)
    assert "NVIDIA driver: none found" in cpu_lines


def test_the_driver_table_is_the_one_the_documentation_shows() -> None:
    doc = (REPO / "docs/gpu.md").read_text(encoding="utf-8")
    for major, minimum in MIN_DRIVER.items():
        assert re.search(rf"\|\s*{major}\.x\s*\|\s*>= {re.escape(minimum)}\s*\|", doc), (major, minimum)
