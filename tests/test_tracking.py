"""Logging backends: where they write, and W&B's mode without credentials."""

from __future__ import annotations

import pytest

from helpers.runtime.tracking import configure_reporting, has_wandb_credentials


@pytest.fixture(autouse=True)
def no_netrc(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login


@pytest.mark.parametrize(
    "report_to,environ,mode,message",
    [
        ("none", {}, "none", False),
        ("wandb", {"WANDB_MODE": "offline"}, "offline", False),
        ("wandb", {"WANDB_MODE": "disabled"}, "disabled", False),
        ("wandb", {"WANDB_API_KEY": "k" * 40}, "online", False),
        ("wandb", {}, "offline", True),  # online without credentials falls back, with a message
        ("wandb", {"WANDB_MODE": "online"}, "offline", True),
    ],
)
def test_wandb_modes(tmp_path, report_to, environ, mode, message):
    printed = []
    assert configure_reporting(report_to, tmp_path / "run", environ, print_fn=printed.append) == mode
    assert bool(printed) is message
    if report_to == "wandb":
        assert environ["WANDB_DIR"] == str(tmp_path / "run")
        assert environ.get("WANDB_MODE", "online") == mode
        assert not any("k" * 40 in line for line in printed)


def test_tensorboard_writes_inside_the_run_folder(tmp_path):
    environ = {}
    configure_reporting("tensorboard", tmp_path / "run", environ)
    assert environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "run" / "tensorboard")


def test_netrc_login_counts_as_credentials(tmp_path):
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "p" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert has_wandb_credentials({})


@pytest.mark.parametrize("report_to,environ", [("mlflow", {}), ("wandb", {"WANDB_MODE": "dryrun"})])
def test_bad_reporting_settings_are_named(tmp_path, report_to, environ):
    with pytest.raises(ValueError, match="report_to|WANDB_MODE"):
        configure_reporting(report_to, tmp_path, environ)
