"""Streams without the vmdescription trailer, written by real QEMU at test time
(`-machine suppress-vmdesc=on`): all RAM is still reported, device sections are sized
by their footers, and the report says so."""

from __future__ import annotations

from qemu_harness import QemuVM, parse_info_ramblock

from miginspect.inspector.capture import open_capture
from miginspect.inspector.info import info


def test_suppress_vmdesc_stream(need_qemu, tmp_path):
    out = tmp_path / "nodesc.mig"
    with QemuVM("-global", "migration.send-configuration=on",
                machine="pc,suppress-vmdesc=on") as vm:
        q = vm.save(out)
        blocks = parse_info_ramblock(vm.hmp("info ramblock"))
    assert q["status"] == "completed", q
    with open_capture(str(out)) as cap:
        rep = info(cap)
        assert cap.walk.error is None
        assert rep.vmdescription is None
        assert any("no vmdescription" in n.message for n in rep.notices)
        full = [s for s in rep.sections if s.type == "FULL"]
        assert full and all(s.sized_by == "footer-search" for s in full)
        assert rep.sections[-1].type == "EOF"
        assert sum(b.page_records for b in rep.ramblocks) == q["ram"]["normal"]
        assert sum(b.zero_records for b in rep.ramblocks) == q["ram"]["duplicate"]
        assert [(b.name, b.used_length) for b in rep.ramblocks] == blocks
