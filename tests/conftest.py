"""Shared fixtures: composing configs in-process, and the offline data copy (BINEXP_DATA).

Tests that need MNIST or CIFAR-10 find them under $BINEXP_DATA, else ../shared/data next to the
repository. Outside CI they are skipped when no copy exists; under CI=true a missing copy is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf, open_dict

from binexp.config import compose_train as compose_config

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    for candidate in (os.environ.get("BINEXP_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "MNIST" / "raw").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail("CI=true but no dataset copy: set BINEXP_DATA to a folder holding MNIST/raw and cifar10-jpeg")
        pytest.skip("no offline dataset copy (set BINEXP_DATA)")
    return root


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own cache and log folders."""
    monkeypatch.setenv("BINEXP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BINEXP_LOGS", str(tmp_path / "logs"))


def compose_train(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """Compose `train` like the CLI does. With `run_dir`, the config is saved there as the CLI's Hydra would
    (`.hydra/config.yaml`) and replaces the Hydra-only `${hydra:runtime.output_dir}`."""
    cfg = compose_config(overrides)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.run_dir = str(run_dir)
        if not (Path(run_dir) / ".hydra" / "config.yaml").exists():
            (Path(run_dir) / ".hydra").mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, Path(run_dir) / ".hydra" / "config.yaml")
    return cfg


SMOKE = ["dataset=synthetic", "debug=smoke", "logger=tensorboard"]
