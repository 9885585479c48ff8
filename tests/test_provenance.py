"""What a run records of the CPU: the model and the kernels torch picked, which decide float rounding."""

import platform
import subprocess

import pytest
import torch

from della.provenance import CPU_KERNEL_ENV, cpu_model, describe_device, git_commit


@pytest.fixture
def no_kernel_overrides(monkeypatch):
    for name in CPU_KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)


def test_a_cpu_run_records_the_cpu_model_and_torch_s_instruction_set(no_kernel_overrides):
    info = describe_device(torch.device("cpu"))
    assert info["cpu"] == cpu_model() and info["cpu"]
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "cpu_kernel_env" not in info


def test_a_kernel_override_in_the_environment_is_recorded(no_kernel_overrides, monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    assert describe_device(torch.device("cpu"))["cpu_kernel_env"] == {"MKL_CBWR": "AVX2"}


def test_cpu_model_reads_the_model_name_and_falls_back_to_platform(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 9654 96-Core Processor"
    assert cpu_model(tmp_path / "absent") == (platform.processor() or platform.machine())


def test_a_cuda_run_records_the_card_and_the_cuda_and_cudnn_builds(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    info = describe_device(torch.device("cuda"))
    assert info["name"] == "NVIDIA H200" and "cpu" not in info
    assert info["cuda"] == torch.version.cuda and info["cudnn"] == torch.backends.cudnn.version()


def test_the_commit_is_dirty_when_a_file_changed_or_a_new_one_is_not_ignored(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("results/\n")
    git("add", ".gitignore")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = git_commit(tmp_path)
    assert head and len(head) == 40  # clean
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.json").write_text("{}")  # ignored output: still clean
    assert git_commit(tmp_path) == head
    (tmp_path / "my_baseline.py").write_text("")  # a new module: code no commit holds
    assert git_commit(tmp_path) == head + "+dirty"
