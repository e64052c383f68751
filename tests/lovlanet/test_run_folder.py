"""The training output folder as a contract: used folders, locks, kills, damaged logs, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_run import TINY

from lovlanet import train
from lovlanet.metrics_log import MetricsLog
from lovlanet.run_folder import RunFolder, RunFolderError


def epochs(folder):
    return [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_used_folder_is_refused_unless_resumed_or_overwritten(trained, capsys):
    before = (trained / "best.pt").stat().st_mtime_ns
    assert train.cli(["--epochs", "1", "--out", str(trained), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0] and "--overwrite" in err[0]
    assert (trained / "best.pt").stat().st_mtime_ns == before and epochs(trained) == [1]
    assert train.cli(["--epochs", "1", "--out", str(trained), "--resume", "--overwrite", *TINY]) == 2
    assert "pass one" in capsys.readouterr().err
    assert train.cli_main(["--epochs", "1", "--out", str(trained), "--overwrite", *TINY]) == 0
    assert epochs(trained) == [1]  # replaced, not appended to (was 1, 1)


@pytest.mark.parametrize("args,word", [
    (["--variant", "kk+mystery"], "unknown variant"),
    (["--dataset", "loveda", "--data-root", "/nonexistent/LoveDA", "--dataset-options", "{}"], "LoveDA"),
    (["--dataset-options", '{"colour": 1}'], "colour"),
])
def test_a_failed_run_creates_nothing(tmp_path, capsys, args, word):
    out = tmp_path / "never"
    assert train.cli([*TINY, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0] and not out.exists()


def test_unusable_out_paths_fail_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    cases = [(tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "under a file")]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append((readonly / "out", "not writable"))
    for out, word in cases:
        assert train.cli([*TINY, "--out", str(out)]) == 2
        assert word in capsys.readouterr().err


HOLD = textwrap.dedent("""
    import sys, time
    from lovlanet.run_folder import RunFolder
    folder = RunFolder(sys.argv[1], resume=True)
    folder.claim()
    print("holding", flush=True)
    time.sleep(120)
""")


def test_a_second_run_is_refused_and_a_killed_runs_lock_does_not_block(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunFolderError, match=f"in use by another training run.*{holder.pid}"):
            RunFolder(tmp_path, resume=True).claim()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    folder = RunFolder(tmp_path, resume=True)
    folder.claim()  # the lock file is still there, its holder is gone
    folder.release()


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    from lovlanet.checkpoints import atomic_write

    def write(handle):
        handle.write(b"x" * 100000)
        os.kill(os.getpid(), signal.SIGKILL)

    atomic_write(os.path.join(sys.argv[1], "last.pt"), write)
""")


def test_temporaries_of_a_run_killed_while_saving_are_removed(trained):
    before = (trained / "last.pt").read_bytes()
    result = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(trained)], timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert [p.name for p in trained.glob(".last.pt.*.tmp")]  # what the kill left
    assert (trained / "last.pt").read_bytes() == before       # the checkpoint itself is whole
    folder = RunFolder(trained, resume=True)
    folder.claim()
    folder.release()
    assert not list(trained.glob(".*.tmp"))


def test_resume_truncates_the_log_to_the_checkpoint_and_skips_damaged_lines(trained, capsys):
    # As left by a kill after the metrics row of epoch 2 but before its checkpoint, plus a torn line.
    with open(trained / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"epoch": 2, "loss": 9.0}) + "\n" + '{"epoch": 3, "loss"')
    with pytest.warns(UserWarning, match=r"metrics.jsonl line 3 is damaged"):
        assert train.cli_main(["--epochs", "2", "--out", str(trained), "--resume", *TINY]) == 0
    assert epochs(trained) == [1, 2]
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["loss"] != 9.0  # epoch 2 was redone, not kept from the dead run


def test_a_row_lost_between_checkpoint_and_log_comes_back_from_the_checkpoint(trained):
    state = torch.load(trained / "last.pt", weights_only=True)
    (trained / "metrics.jsonl").write_text("")  # the kill came after last.pt, before its row
    log = MetricsLog(trained, enabled=True)
    log.truncate(state["epoch"], state["metrics_row"])
    assert epochs(trained) == [1]
    assert (trained / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")


def test_metrics_are_strict_json(tmp_path):
    log = MetricsLog(tmp_path, enabled=True)
    log.write({"epoch": 1, "val_mIoU": float("nan"), "loss": 0.5})
    assert json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=pytest.fail)["val_mIoU"] is None
