"""Run a tiny workflow through a real single-node Slurm with profiles/slurm.

Runs with ``-m cluster`` or under CI (``CI`` set), as root (packages are apt-get installed when
missing); see tests/cluster/conftest.py:

    python -m pytest tests/cluster -q -m cluster -s
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cluster_settings import GPU_PARTITION, PROFILE, profile_partition
from slurm import LocalSlurm, wait_until

pytestmark = pytest.mark.cluster

RUN_TIMEOUT = 150  # hard limit per snakemake run (s); a healthy run takes 25-60 s here

TRAIN_PY = r'''
"""Fake training: one "step" per second."""
import argparse, json, os, time

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, required=True)
ap.add_argument("--out", required=True)
a = ap.parse_args()
for step in range(a.steps):
    time.sleep(1)
    print(f"train: step {step + 1}/{a.steps}", flush=True)
with open(a.out, "w") as fh:
    json.dump({"steps": a.steps, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}, fh)
'''

SNAKEFILE = '''
GPU = int(config.get("gpu", 0))  # 0 on a CPU-only cluster: no --gpus request at all
STEPS = int(config.get("steps", 4))

localrules: all

rule all:
    input: "results/report.txt"

rule prepare:
    output: "data/prepared.txt"
    shell: "echo slurm_job_id=$SLURM_JOB_ID > {{output}}"

rule train:
    input: "data/prepared.txt"
    output: "model/final.json"
    params: steps=STEPS
    resources: gpu=GPU
    shell: "{python} train.py --steps {{params.steps}} --out {{output}}"

rule report:
    input: "model/final.json"
    output: "results/report.txt"
    shell: "cat {{input}} > {{output}} && echo slurm_job_id=$SLURM_JOB_ID >> {{output}}"
'''


def make_workflow(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Snakefile").write_text(textwrap.dedent(SNAKEFILE.format(python=shlex.quote(sys.executable))))
    (root / "train.py").write_text(TRAIN_PY)
    return root


def snakemake_args(*extra: str, steps: int, gpu: int = LocalSlurm.gpus) -> list[str]:
    return [
        "--executor", "slurm",
        "--workflow-profile", str(PROFILE),
        "--jobs", "2",
        "--config", f"gpu={gpu}", f"steps={steps}",
        "--set-resources", f"train:slurm_partition={GPU_PARTITION}",
        *extra,
    ]


def test_workflow_runs_through_sbatch(cluster: LocalSlurm, tmp_path: Path):
    wf = make_workflow(tmp_path / "wf")
    # steps=1 keeps every job under ~11 s, so the plugin's status polling (1 s, then
    # +10 s per check that sees nothing finished) notices each job at its 2nd check.
    run = cluster.run_snakemake(snakemake_args("--slurm-keep-successful-logs", steps=1),
                                cwd=wf, timeout=RUN_TIMEOUT)
    print(f"[local-slurm] 3-job workflow through slurm: {run.seconds:.1f} s")
    assert not run.timed_out, f"snakemake hung; log:\n{run.output[-4000:]}"
    assert run.returncode == 0, run.output[-4000:]

    # every job went through sbatch: three distinct Slurm ids, all completed
    submitted = run.slurm_job_ids
    assert len(submitted) == 3, run.output[-4000:]
    ids = sorted(submitted.values())
    assert len(set(ids)) == 3
    known = cluster.jobs_by_id()
    comments = {}
    for job_id in ids:
        assert job_id in known, f"job {job_id} not in squeue -t all: {known}"
        assert known[job_id]["state"] == "COMPLETED", known[job_id]
        comments[known[job_id]["comment"]] = job_id
    assert set(comments) == {"rule_prepare", "rule_train", "rule_report"}
    # per-rule resource override reached sbatch -p; the rest used the profile default
    assert known[comments["rule_train"]]["partition"] == GPU_PARTITION
    assert known[comments["rule_prepare"]]["partition"] == profile_partition()

    # outputs exist and were written inside the Slurm jobs
    prepared = (wf / "data/prepared.txt").read_text()
    assert f"slurm_job_id={comments['rule_prepare']}" in prepared
    final = json.loads((wf / "model/final.json").read_text())
    assert final == {"steps": 1, "slurm_job_id": str(comments["rule_train"])}
    assert f"slurm_job_id={comments['rule_report']}" in (wf / "results/report.txt").read_text()

    # one Slurm log per job under the profile's slurm-logdir
    logs = {int(p.stem): p for p in (wf / "logs/slurm").rglob("*.log")}
    assert set(ids) <= set(logs), sorted(logs)
    assert "train: step 1/1" in logs[comments["rule_train"]].read_text()


def test_hung_snakemake_is_killed_with_its_process_group(cluster: LocalSlurm, tmp_path: Path):
    """run_snakemake's hard timeout SIGKILLs snakemake and everything it started."""
    wf = tmp_path / "hang"
    wf.mkdir()
    (wf / "Snakefile").write_text(textwrap.dedent('''
        rule hang:
            output: "never.txt"
            shell: "echo $$ > pid.txt; sleep 300; touch {output}"
    '''))
    proc = cluster.start_snakemake(["--cores", "1"], cwd=wf)
    pid_file = wf / "pid.txt"
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60,
                         what="the job to start"))
    # a deadline that is already over: wait() must SIGKILL the group and return
    run = proc.wait(timeout=time.monotonic() - proc.started + 0.5)
    assert run.timed_out and run.returncode is None
    # the shell of the job (and its sleep) died with the process group
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or
               Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z",
               timeout=5, what=f"job shell {pid} to die")


def test_second_cluster_picks_free_ports_and_stops_only_its_daemons(cluster: LocalSlurm):
    """Ports 6817/6818 are taken by the module cluster: a second one moves aside,
    runs a job, and stopping it leaves the first cluster untouched."""
    with LocalSlurm(partitions=("other",)) as second:
        assert {second.ctld_port, second.slurmd_port}.isdisjoint(
            {cluster.ctld_port, cluster.slurmd_port})
        out = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "srun true"],
                             env=second.submit_env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        job_id = int(out.stdout.strip().split(";")[0])
        wait_until(lambda: second.jobs_by_id().get(job_id, {}).get("state") == "COMPLETED",
                   timeout=30, what=f"job {job_id} to complete")
        pids = second.pids
    assert second.scratch is None and not second.pids
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists(), f"{name} ({pid}) still running"
    assert cluster.running
    assert "idle" in cluster.sinfo()
