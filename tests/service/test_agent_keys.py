"""The agent master key: from the setting, else from a file in the data folder created once with mode 0600."""

import os
import stat
from pathlib import Path

import pytest

from orfeas.service.agent_keys import load_master_key
from tests.service.test_agent_accounts import MASTER_KEY


def test_load_master_key_prefers_the_setting_then_the_file(tmp_path: Path) -> None:
    assert load_master_key(MASTER_KEY.hex(), tmp_path) == MASTER_KEY
    assert not (tmp_path / "agent-master.key").exists()

    created = load_master_key(None, tmp_path / "data")
    path = tmp_path / "data" / "agent-master.key"
    assert len(created) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_master_key(None, tmp_path / "data") == created
    assert [p.name for p in path.parent.iterdir()] == ["agent-master.key"]
    for bad in ("not hex", "abcd"):
        with pytest.raises(ValueError):
            load_master_key(bad, tmp_path)
