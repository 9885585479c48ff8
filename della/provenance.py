"""What every run records: versions, git commit, device, host, time."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "della-bench")


def git_commit(repo: Path = Path(__file__).resolve().parents[1]) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
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
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def provenance(device: torch.device) -> dict[str, object]:
    return {"git_commit": git_commit(), "versions": versions(), "device": describe_device(device),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device = 'cuda' but no CUDA device is visible")
    return torch.device(name)
