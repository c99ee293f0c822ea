"""flaxdigits/ensemble.py: members trained at the same time, one per core, then scored."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from flaxdigits import ensemble, runtime
from tests.conftest import REPO, run_launch

pytestmark = pytest.mark.slow


def test_members_train_side_by_side_pinned_and_score_as_an_ensemble(tmp_path, synthetic_dir):
    result = subprocess.run(
        [sys.executable, "-m", "flaxdigits.ensemble", "--config=configs/tiny.py",
         f"--workdir={tmp_path / 'ens'}", "--members=3", "--first_seed=5", "--at_once=2",
         "--own_splits", f"--config.data.dir={synthetic_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    members = ensemble.member_dirs(tmp_path / "ens", 3)
    for index, member in enumerate(members):
        saved = json.loads((member / "config.json").read_text())
        assert saved["seed"] == saved["data"]["split_seed"] == 5 + index
        assert (member / "report.json").is_file()
        log = (member.parent / f"{member.name}.log").read_text()
        # One core each, and ensemble.PINNED_DEVICES_PER_CORE devices on it (they divide
        # tiny.py's batches, 32 and 64).
        devices = ensemble.PINNED_DEVICES_PER_CORE
        assert f"CpuDevice(id={devices - 1})]" in log, log[-2000:]
        assert "pinned to core" in log
    command = result.stdout.strip().splitlines()[-1].strip()
    assert command.startswith("python launch.py --config=configs/tiny.py")
    evaluated = run_launch("--config=configs/tiny.py", f"--workdir={members[0]}",
                           "--mode=evaluate", f"--config.data.dir={synthetic_dir}",
                           f"--config.inference.ensemble_workdirs=('{members[1]}', "
                           f"'{members[2]}')")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads((members[0] / "report.json").read_text())
    assert report["ensemble_workdirs"] == [str(members[1]), str(members[2])]


def test_bad_arguments_are_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flaxdigits.ensemble",
                             "--config=configs/nope.py", f"--workdir={tmp_path}"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "configs/nope.py: no such config file" in result.stderr


def test_one_after_another_by_default_on_every_core(tmp_path, synthetic_dir):
    results = ensemble.train_members("configs/tiny.py", tmp_path / "ens", 2, 0,
                                     [f"--config.data.dir={synthetic_dir}"])
    assert [code for _, code, _ in results] == [0, 0]
    log = (tmp_path / "ens" / "member_1.log").read_text()
    devices = runtime.cpu_device_count(len(os.sched_getaffinity(0)), (32, 64))
    assert f"CpuDevice(id={devices - 1})]" in log  # launch.py's own layout: every core


def test_the_ensemble_benchmark_scores_members_and_prefixes(trained):
    workdir = str(trained["workdir"])
    result = subprocess.run(
        [sys.executable, "benchmarks/ensemble.py", workdir, workdir, "--tta_views=1,3",
         f"--data_dir={trained['data_dir']}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines()]
    alone = [row for row in rows if row[0] == "work"]
    together = [row for row in rows if row[:2] == ["k", "="]]
    assert len(alone) == 2 and len(together) == 1
    # The report of training is the member alone with 1 view; the same model twice is itself.
    assert float(alone[0][-2]) == trained["final"]["report"]["accuracy"]
    assert together[0][-2:] == alone[0][-2:]

    bad = subprocess.run([sys.executable, "benchmarks/ensemble.py", workdir, "--tta_views=0"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "want numbers from 1 to 9" in bad.stderr


def test_the_ensemble_benchmark_scores_the_validation_digits_the_members_held_out(trained,
                                                                                 tmp_path):
    workdir = trained["workdir"]
    result = subprocess.run(
        [sys.executable, "benchmarks/ensemble.py", str(workdir), "--tta_views=1",
         "--split=validation", f"--data_dir={trained['data_dir']}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MNIST validation accuracy (599 digits)" in result.stdout  # 10% of each class
    member = next(line.split() for line in result.stdout.splitlines() if line.startswith("work"))
    step = int(member[member.index("step") + 1].rstrip(")"))
    # What training measured on its validation digits at that checkpoint.
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    measured = next(r["val_accuracy"] for r in records if r["step"] == step and "epoch" in r)
    assert float(member[-1]) == pytest.approx(measured, abs=5e-5)

    # A member that held out other digits has trained on some of these: refused.
    other = tmp_path / "other_split"
    shutil.copytree(workdir, other)
    saved = json.loads((other / "config.json").read_text())
    saved["data"]["split_seed"] = 7
    (other / "config.json").write_text(json.dumps(saved))
    refused = subprocess.run(
        [sys.executable, "benchmarks/ensemble.py", str(workdir), str(other), "--tta_views=1",
         "--split=validation", f"--data_dir={trained['data_dir']}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "needs workdirs that held out the same validation digits" in refused.stderr
    assert "split_seed 7" in refused.stderr and "Traceback" not in refused.stderr
