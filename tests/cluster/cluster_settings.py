"""Where the cluster tests find the profile, and the partitions of the test node."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm"
GPU_PARTITION = "gpu"  # a second partition on the test node, reached via --set-resources


def profile_partition() -> str:
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    return str(profile["default-resources"]["slurm_partition"])
