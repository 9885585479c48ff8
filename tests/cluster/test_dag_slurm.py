"""The embedded default DAG through a real Slurm: every heavy job goes through sbatch, a training
job cancelled with scancel resumes from its checkpoint on the rerun, and Table 1's rows are identical
to the local `--cores 2` run's (same seeds, same torch thread count: the run config fixes it). Two of
Table 1's models go through Slurm (GPT-2, whose LM also featurises MAUVE, and DELLA, the cancelled
one) with the Human row: the other models and the conditional half (Table 2) run the same rules and
would only multiply the test's time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from cluster_settings import PROFILE, REPO
from della.config import dataset_task
from slurm import LocalSlurm, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
RUN_TIMEOUT = 1200  # hard limit per snakemake run (s)
HEAVY_RULES = {"train", "evaluate", "generate", "interpolation", "text_metrics", "human_metrics"}
CANCELLED = "della"  # the model whose training job is cancelled mid-run
MODELS = ["gpt2", CANCELLED]  # gpt2: MAUVE's features come from the dataset's GPT-2 run (mauve_encoder: lm)


def table1_config(workdir: Path) -> Path:
    """config/config.yaml with its sentence dataset only, running MODELS; still experiment
    `default`, so its Table 1 rows are the default's."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["datasets"] = {name: {**d, "models": MODELS} for name, d in config["datasets"].items()
                          if dataset_task(d) == "lm"}
    config["models"] = {name: config["models"][name] for name in MODELS}
    config.update(experiment="default", tables={"names": ["table1"]})
    path = workdir / "table1-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def dag_args(workdir: Path) -> list[str]:
    # --retries 0: the profile's retry would otherwise resubmit the cancelled job by itself
    return ["-s", str(REPO / "Snakefile"), "-d", str(workdir), "--executor", "slurm",
            "--workflow-profile", str(PROFILE), "--jobs", "2", "--retries", "0",
            "--configfile", str(table1_config(workdir))]


def table_rows(workdir: Path) -> dict[str, str]:
    """model -> its line of results/default/tables/table1.csv (every number of the row)"""
    lines = (workdir / "results/default/tables/table1.csv").read_text().splitlines()[1:]
    return {line.split(",")[1]: line for line in lines}


def rules_of(cluster: LocalSlurm, job_ids) -> dict[int, str]:
    jobs = cluster.jobs_by_id()
    return {i: jobs.get(i, {}).get("comment", "?").split("_wildcards")[0].removeprefix("rule_") for i in job_ids}


def test_dag_through_slurm_resumes_after_scancel_and_matches_the_local_table(cluster, default_dag, tmp_path):
    run_dir = tmp_path / f"results/default/runs/synthetic/{CANCELLED}/seed0"
    t0 = time.monotonic()
    proc = cluster.start_snakemake(dag_args(tmp_path), cwd=tmp_path)
    try:
        def training_with_a_checkpoint():
            if proc.poll() is not None:
                raise AssertionError(f"snakemake ended early:\n{proc.output()[-4000:]}")
            if (run_dir / "run.json").exists():
                raise AssertionError(f"{CANCELLED} finished training before it could be cancelled")
            if not (run_dir / "checkpoint/last.pt").exists():
                return None
            return [j for j in cluster.squeue_jobs("RUNNING")
                    if j["comment"] == f"rule_train_wildcards_synthetic_{CANCELLED}_0"]
        job = wait_until(training_with_a_checkpoint, timeout=RUN_TIMEOUT, interval=0.1,
                         what=f"{CANCELLED} training with a checkpoint")[0]
        cluster.scancel(job["id"])
        first = proc.wait(timeout=RUN_TIMEOUT)
    finally:
        proc.kill()
    assert not first.timed_out and first.returncode != 0, first.output[-4000:]
    assert not (run_dir / "run.json").exists()
    assert cluster.jobs_by_id()[int(job["id"])]["state"] == "CANCELLED"
    assert list((tmp_path / "logs/slurm").rglob(f"{job['id']}.log")), "the cancelled job's Slurm log is kept"

    second = cluster.run_snakemake(dag_args(tmp_path), cwd=tmp_path, timeout=RUN_TIMEOUT)
    print(f"\n[local-slurm] DAG with scancel + rerun: {time.monotonic() - t0:.0f} s "
          f"(rerun {second.seconds:.0f} s)")
    assert not second.timed_out and second.returncode == 0, second.output[-4000:]
    assert "resumed from" in (tmp_path / f"logs/default/train/synthetic/{CANCELLED}/seed0.log").read_text()

    submitted = [*first.slurm_job_ids.values(), *second.slurm_job_ids.values()]  # Slurm ids are unique
    per_rule = rules_of(cluster, submitted)
    assert set(per_rule.values()) == HEAVY_RULES, per_rule
    assert sum(rule == "train" for rule in per_rule.values()) == len(MODELS) + 1  # the cancelled one twice
    rows, local = table_rows(tmp_path), table_rows(default_dag)
    assert set(rows) == {"human", *MODELS}
    assert rows == {model: local[model] for model in rows}
