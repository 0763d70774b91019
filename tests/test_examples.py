"""docs/examples/approx_sign: a method defined outside the package, composed, trained, compared and exported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.test_cli import binexp

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "approx_sign"
SEARCH = f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"


@pytest.fixture
def approx_sign(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import approx_sign as module

    yield module
    sys.modules.pop("approx_sign", None)


def test_approx_sign_passes_bireal_gradient_and_computes_sign(approx_sign):
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.25, 0.75, 1.0, 2.0], requires_grad=True)
    act = approx_sign.ApproxSignActivation("conv2")
    y = act(x)
    y.backward(torch.ones_like(x))
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1, 1]
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 2.0, 1.5, 0.5, 0.0, 0.0]  # 2 - 2|x| on |x| < 1


def test_a_method_outside_the_package_trains_sweeps_against_ste_and_exports(tmp_path):
    env = {"PYTHONPATH": str(EXAMPLE)}
    sweep = tmp_path / "sweep"
    out = binexp("train", "-m", SEARCH, "method=ste,approx_sign", "dataset=synthetic", "debug=smoke",
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    targets = [OmegaConf.load(sweep / job / ".hydra" / "config.yaml").method._target_ for job in ("0", "1")]
    assert targets == ["binexp.binarize.ste.STE", "approx_sign.ApproxSign"]
    assert all("test/acc" in json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1"))
    out = binexp("export", str(sweep / "1"), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    out = binexp("verify", str(sweep / "1" / "export" / "model.safetensors"), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((sweep / "1" / "export" / "verify.json").read_text())["differing_predictions"] == 0

    run = tmp_path / "no-path"  # without its module on Python's path the method's config names what is missing
    out = binexp("train", SEARCH, "method=approx_sign", "dataset=synthetic", "debug=smoke", f"hydra.run.dir={run}",
                 cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.endswith(
        "binexp: error: method._target_=approx_sign.ApproxSign: no module 'approx_sign' on Python's path; a class "
        "defined outside binexp needs its folder on PYTHONPATH (or its package installed)\n")
    assert not run.exists()


def test_train_help_lists_the_options_a_searchpath_adds(tmp_path):
    def method_line(*args):
        out = binexp("train", *args, "--help", cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        return next(line for line in out.stdout.splitlines() if line.startswith("method: "))

    assert method_line() == "method: abr, bc, bnn, bwn, fp, sbn, ste, xnor"
    assert method_line(SEARCH) == "method: abr, approx_sign, bc, bnn, bwn, fp, sbn, ste, xnor"


RSIGN = Path(__file__).resolve().parents[1] / "docs" / "examples" / "rsign"


def test_a_learned_threshold_method_trains_and_exports_the_network_it_trained(tmp_path):
    """docs/examples/rsign: sign(x - alpha) with alpha learned per channel. Its step form is the trained network
    (protocol/binary = test/acc), and the export, alpha folded in, verifies with 0 differences."""
    env = {"PYTHONPATH": str(RSIGN)}
    run = tmp_path / "run"
    out = binexp("train", f"hydra.searchpath=[file://{RSIGN / 'conf'}]", "method=rsign", "dataset=synthetic",
                 "debug=smoke", "architecture.batch_norm=true", "architecture.conv_act=true", f"hydra.run.dir={run}",
                 cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol/binary"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    alphas = [v for k, v in state.items() if k.endswith(".threshold")]
    assert len(alphas) == 3 and all(bool((a != 0).any()) for a in alphas)  # learned, not left at 0
    out = binexp("export", str(run), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    out = binexp("verify", str(run / "export" / "model.safetensors"), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run / "export" / "verify.json").read_text())["differing_predictions"] == 0
