"""A real single-node Slurm for the cluster tests, started once per session.

The tests run when selected with `-m cluster` or under CI (`CI` set, as `.ci/run` does), as root:
the Debian packages are apt-get installed when missing. Elsewhere they skip with the reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cluster_settings import GPU_PARTITION, profile_partition
from slurm import LocalSlurm, SlurmUnavailable


@pytest.fixture(scope="session")
def cluster(request) -> LocalSlurm:
    selected = "cluster" in (request.config.getoption("markexpr") or "")
    if not selected and not os.environ.get("CI"):
        pytest.skip("starts a real Slurm (apt-get install as root): select with -m cluster (CI does)")
    slurm = LocalSlurm(partitions=(profile_partition(), GPU_PARTITION))
    try:
        slurm.start()
    except SlurmUnavailable as exc:
        pytest.skip(f"local Slurm unavailable: {exc}")
    request.addfinalizer(slurm.stop)
    print(f"\n[local-slurm] bring-up {slurm.startup_seconds:.2f} s "
          f"(package check/install {slurm.install_seconds:.2f} s), node {slurm.node}, {slurm.cpus} CPUs")
    return slurm
