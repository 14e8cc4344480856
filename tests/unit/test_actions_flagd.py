from __future__ import annotations

import json
import stat
from typing import TYPE_CHECKING

import pytest

from coalmine.actions.flagd import (
    PREVIOUS_DEFAULT,
    PREVIOUS_TARGETING,
    SWITCHED_OFF,
    FlagdError,
    switch_off,
)

if TYPE_CHECKING:
    from pathlib import Path

TARGETING = {"if": [{"==": [{"var": "tier"}, "beta"]}, "treatment", "control"]}


def flag_file(tmp_path: Path, **flag: object) -> Path:
    definition = {
        "state": "ENABLED",
        "variants": {"control": "old", "treatment": "new"},
        "defaultVariant": "treatment",
        "targeting": TARGETING,
    } | flag
    document = {
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {
            "new-checkout": definition,
            "other": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"},
        },
    }
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_the_flag_serves_control_and_the_old_rules_are_kept(tmp_path: Path) -> None:
    path = flag_file(tmp_path)
    assert switch_off(path, "new-checkout", "control") is True
    document = json.loads(path.read_text())
    flag = document["flags"]["new-checkout"]
    assert flag["defaultVariant"] == "control"
    assert "targeting" not in flag
    assert flag["state"] == "ENABLED"
    assert flag["variants"] == {"control": "old", "treatment": "new"}
    assert flag["metadata"][SWITCHED_OFF] is True
    assert flag["metadata"][PREVIOUS_DEFAULT] == "treatment"
    assert json.loads(flag["metadata"][PREVIOUS_TARGETING]) == TARGETING
    # Everything else is left as it was.
    assert document["$schema"] == "https://flagd.dev/schema/v0/flags.json"
    assert document["flags"]["other"] == {
        "state": "ENABLED",
        "variants": {"a": 1},
        "defaultVariant": "a",
    }


def test_switching_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    path = flag_file(tmp_path)
    switch_off(path, "new-checkout", "control")
    before = path.read_bytes()
    inode = path.stat().st_ino
    assert switch_off(path, "new-checkout", "control") is False
    assert path.read_bytes() == before
    assert path.stat().st_ino == inode  # not even rewritten


def test_existing_metadata_is_kept(tmp_path: Path) -> None:
    path = flag_file(tmp_path, metadata={"owner": "team-checkout"})
    switch_off(path, "new-checkout", "control")
    metadata = json.loads(path.read_text())["flags"]["new-checkout"]["metadata"]
    assert metadata["owner"] == "team-checkout"
    assert metadata[SWITCHED_OFF] is True


def test_the_write_is_atomic_and_keeps_permissions(tmp_path: Path) -> None:
    path = flag_file(tmp_path)
    path.chmod(0o640)
    inode = path.stat().st_ino
    switch_off(path, "new-checkout", "control")
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flags.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("flag_key", "variant", "message"),
    [
        ("missing", "control", "no flag 'missing'"),
        ("new-checkout", "off", "has no variant 'off'"),
    ],
)
def test_unknown_flags_and_variants_are_refused(
    tmp_path: Path, flag_key: str, variant: str, message: str
) -> None:
    path = flag_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(FlagdError, match=message):
        switch_off(path, flag_key, variant)
    assert path.read_bytes() == before


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FlagdError, match="cannot read"):
        switch_off(tmp_path / "absent.json", "f", "control")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FlagdError, match="not a JSON flag definition"):
        switch_off(bad, "f", "control")
    bad.write_text('{"flag": {}}')
    with pytest.raises(FlagdError, match="no 'flags' object"):
        switch_off(bad, "f", "control")


def test_a_failed_write_leaves_the_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = flag_file(tmp_path)
    before = path.read_bytes()

    def refuse(src: str, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("coalmine.actions.flagd.os.replace", refuse)
    with pytest.raises(FlagdError, match="cannot write the flag definition: Permission denied"):
        switch_off(path, "new-checkout", "control")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flags.json"]
