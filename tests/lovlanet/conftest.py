"""Shared by the console-tool tests: a tiny training setup and one trained run folder."""
import shutil

import pytest
from tiny_run import TINY

from lovlanet import train


@pytest.fixture(scope="session")
def _trained_once(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert train.cli_main(["--epochs", "1", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def trained(_trained_once, tmp_path):
    """A fresh copy of a finished 1-epoch run folder (tests may change it)."""
    copy = tmp_path / "trained"
    shutil.copytree(_trained_once, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy
