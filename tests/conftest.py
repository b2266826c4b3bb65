"""Shared fixtures: tiny offline checkpoints, built once per test session."""

from __future__ import annotations

import pytest

from helpers.offline import build_tiny_checkpoint
from helpers.families import FAMILY_NAMES


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Family -> path of a tiny random checkpoint for every supported Qwen-VL family."""
    root = tmp_path_factory.mktemp("offline_models")
    return {family: str(build_tiny_checkpoint(family, root / family)) for family in FAMILY_NAMES}
