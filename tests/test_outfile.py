"""Output paths (miginspect/outfile.py): only regular files are ever created or replaced,
never through a symlink, never over a FIFO (or a device node: the same rule; the tests use
FIFOs in tmp_path and never touch /dev), with or without --force."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, sample_names, sample_path

from miginspect.cli import main
from miginspect.errors import UsageError
from miginspect.outfile import AtomicFile, OutputDir, write_atomic


def _small_sample() -> Path:
    names = sample_names("q10-paused-legacy") or sample_names("q*")
    if not names:
        pytest.skip("no samples bundled")
    return sample_path(names[0])


def _cli(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command line in a child process: a FIFO that were opened would hang it, and the
    timeout turns that into a failure instead of a stuck test run."""
    return subprocess.run([sys.executable, "-m", "miginspect", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


# -- convert -------------------------------------------------------------------------------
@pytest.mark.parametrize("force", [False, True])
def test_convert_never_replaces_a_fifo(tmp_path: Path, force: bool) -> None:
    src = _small_sample()
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    r = _cli("convert", str(src), str(fifo), "--to", "mapped-ram", *(["--force"] if force else []))
    assert r.returncode == 2, r.stderr
    assert "FIFO" in r.stderr and "regular file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert _leftovers(tmp_path) == []


def test_convert_never_replaces_a_symlink(tmp_path: Path) -> None:
    src = _small_sample()
    target = tmp_path / "precious.bin"
    target.write_bytes(b"keep me")
    link = tmp_path / "out.mig"
    link.symlink_to(target)
    for extra in ([], ["--force"]):
        assert main(["convert", str(src), str(link), "--to", "mapped-ram", *extra]) == 2
    assert link.is_symlink() and target.read_bytes() == b"keep me"
    assert _leftovers(tmp_path) == []


def test_convert_refuses_a_folder_and_the_input(tmp_path: Path) -> None:
    src = _small_sample()
    (tmp_path / "d").mkdir()
    assert main(["convert", str(src), str(tmp_path / "d"), "--to", "legacy", "--force"]) == 2
    assert main(["convert", str(src), str(src), "--to", "legacy", "--force"]) == 2


# -- extract ---------------------------------------------------------------------------------
def test_extract_refuses_a_symlinked_output_folder(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    src = _small_sample()
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "out"
    link.symlink_to(real)
    for extra in ([], ["--force"]):
        assert main(["extract", str(src), "-o", str(link), *extra]) == 2
        err = capsys.readouterr().err
        assert "symlink" in err and len(err.strip().splitlines()) == 1
    assert list(real.iterdir()) == []
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert main(["extract", str(src), "-o", str(dangling)]) == 2
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("force", [False, True])
def test_extract_never_replaces_a_fifo_inside_the_folder(tmp_path: Path, force: bool) -> None:
    src = _small_sample()
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "pc.ram.raw")
    r = _cli("extract", str(src), "-o", str(out), *(["--force"] if force else []))
    assert r.returncode == 2, r.stderr
    assert "FIFO" in r.stderr
    assert stat.S_ISFIFO(os.lstat(out / "pc.ram.raw").st_mode)
    assert sorted(p.name for p in out.iterdir()) == ["pc.ram.raw"]  # nothing was written


# -- the module ------------------------------------------------------------------------------
def test_write_atomic_rules(tmp_path: Path) -> None:
    p = tmp_path / "report.txt"
    write_atomic(p, "one\n")
    assert p.read_text() == "one\n" and oct(p.stat().st_mode & 0o777) != "0o600"
    with pytest.raises(UsageError, match="--force"):
        write_atomic(p, "two\n")
    keep = tmp_path / "hardlink.txt"
    os.link(p, keep)
    write_atomic(p, "two\n", force=True)
    assert p.read_text() == "two\n" and keep.read_text() == "one\n"  # replaced, not rewritten
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="FIFO"):
        write_atomic(fifo, "x", force=True)
    link = tmp_path / "l"
    link.symlink_to(p)
    with pytest.raises(UsageError, match="symlink"):
        write_atomic(link, "x", force=True)
    assert p.read_text() == "two\n"
    assert _leftovers(tmp_path) == []


def test_atomic_file_does_not_clobber_what_appeared_meanwhile(tmp_path: Path) -> None:
    p = tmp_path / "out.bin"
    f = AtomicFile(p)
    os.write(f.fd, b"new")
    p.write_bytes(b"someone else's")  # appears between the check and the rename
    with pytest.raises(UsageError, match="exists"):
        f.commit()
    f.abort()
    assert p.read_bytes() == b"someone else's"
    assert _leftovers(tmp_path) == []
    with AtomicFile(tmp_path / "never.bin") as g:  # left without commit: nothing stays
        os.write(g.fd, b"x")
    assert not (tmp_path / "never.bin").exists() and _leftovers(tmp_path) == []


def test_output_dir_rules(tmp_path: Path) -> None:
    with OutputDir(tmp_path / "o", force=False) as d:
        fd = d.open("a.raw")
        os.close(fd)
        with pytest.raises(UsageError, match="--force"):
            d.check(["a.raw"])
        for bad in ("../x", "..", "", "a/b"):
            with pytest.raises(UsageError, match="outside"):
                d.open(bad)
        (tmp_path / "o" / "ln").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(UsageError, match="symlink"):
            d.open("ln")
    assert not (tmp_path / "elsewhere").exists()
    with OutputDir(tmp_path / "o", force=True) as d:
        os.mkfifo(tmp_path / "o" / "p")
        with pytest.raises(UsageError, match="FIFO"):
            d.check(["p"])
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UsageError, match="not a folder"):
        OutputDir(tmp_path / "file", force=True)
