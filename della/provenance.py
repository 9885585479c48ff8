"""What every run records: versions, git commit, device, host, time."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "della-bench")
# Settings that pick another CPU kernel, hence another float rounding, for the same code and seed.
CPU_KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
CPUINFO = Path("/proc/cpuinfo")


def git_commit(repo: Path = Path(__file__).resolve().parents[1]) -> str | None:
    """HEAD, "+dirty" when the tree differs from it: a changed file, or a new one git does not ignore
    (a baseline or metric added as one new file runs code that no commit holds)."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def describe_device(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {"type": device.type, "torch_threads": torch.get_num_threads(),
                               "host": platform.node(), "machine": platform.machine()}
    if device.type == "cuda":
        # The card and the CUDA/cuDNN builds pick the GPU kernels, as the CPU and its ISA do below.
        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        # A CPU model or instruction set of its own picks its own kernels, whose rounding can move a
        # trained model's numbers: the same config and seed reproduce exactly only where these match.
        info["cpu"] = cpu_model()
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        overrides = {name: os.environ[name] for name in CPU_KERNEL_ENV if name in os.environ}
        if overrides:
            info["cpu_kernel_env"] = overrides
    return info


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """E.g. "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8480+" (Linux), else what `platform` knows."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: torch.device) -> dict[str, object]:
    return {"git_commit": git_commit(), "versions": versions(), "device": describe_device(device),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device = 'cuda' but no CUDA device is visible")
    return torch.device(name)
