"""`verify --repair` refuses a replica's log (issue 12, finding 4; docs/adr/0009): a repair
rewrites the log, which must not happen to a replica - its positions are its bookkeeping with
the chain server. The refusal says to delete the replica and resync, and changes nothing."""

from __future__ import annotations

import pytest

from application.repair import Repairer, RepairError
from application.session import Formats
from domain.events import Origin, Uploaded
from domain.fs.model import ROOT_INO
from tests.fakes import FastCrypto

from .conftest import Rig


def _write(rig: Rig, name: bytes, payload: bytes) -> None:
    fs = rig.fs
    fh, _ = fs.create(ROOT_INO, name, 0o644, 0, 0)
    fs.write(fh, 0, payload)
    fs.release(fh)
    rig.mounted.session.commit()


@pytest.mark.parametrize(
    "marker",
    [Uploaded(upto=0, server_end=0), Origin(end=0, skipped=[])],
    ids=["Uploaded", "Origin"],
)
def test_repair_refuses_a_replica_and_changes_nothing(rig: Rig, marker: object) -> None:
    _write(rig, b"f", b"x")
    rig.mounted.session.append_marker([marker])  # type: ignore[list-item]
    rig.mounted.close()
    raw = bytes(rig.logs.disk("local"))
    with pytest.raises(RepairError, match=r"replica .* resynchronise it from the server"):
        Repairer(rig.logs, FastCrypto(), rig.clock).repair("local", b"pw", Formats())
    assert bytes(rig.logs.disk("local")) == raw and not rig.logs.preserved
    rig.mounted = rig.service.open(rig.request)


def test_a_local_log_is_still_repaired(rig: Rig) -> None:
    _write(rig, b"f", b"x")
    rig.mounted.close()
    report = Repairer(rig.logs, FastCrypto(), rig.clock).repair("local", b"pw", Formats())
    assert report.kept_as
    rig.mounted = rig.service.open(rig.request)
