"""Bad files are listed with a reason and never stop the run."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from tests.helpers import picture, run_cli


def _bad_folder(folder: Path) -> dict[str, str]:
    """Write one of each kind of bad file; return {file name: expected reason fragment}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    picture(1, (200, 150)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (folder / "notes.jpg").write_text("this is not a picture\n")
    (folder / "dangling.png").symlink_to(folder / "does-not-exist.png")
    picture(2, (300, 200)).save(folder / "huge.png")  # over the limit set below
    png = io.BytesIO()
    picture(3).save(png, "PNG")
    (folder / "header-only.png").write_bytes(png.getvalue()[:40])
    return {
        "empty.jpg": "empty",
        "truncated.jpg": "truncated",
        "notes.jpg": "not a supported image",
        "dangling.png": "dangling",
        "huge.png": "too large",
        "header-only.png": "",
    }


def test_every_bad_file_is_reported_and_the_rest_indexed(
    env, photos: Path, monkeypatch, capsys
) -> None:
    expected = _bad_folder(photos / "bad")
    monkeypatch.setenv("PIXSEARCH_MAX_IMAGE_PIXELS", "50000")
    res = run_cli(capsys, "index", str(photos), "--json")
    assert res.code == 0
    summary = res.json()
    assert summary["added"] == 12
    failed = {Path(f["path"]).name: f["error"] for f in summary["failed"]}
    assert set(failed) == set(expected)
    for name, fragment in expected.items():
        assert fragment in failed[name], (name, failed[name])
        assert "\n" not in failed[name] and len(failed[name]) < 200


def test_bad_files_print_one_line_each_without_json(env, tmp_path: Path, capsys) -> None:
    expected = _bad_folder(tmp_path / "bad")
    res = run_cli(capsys, "index", str(tmp_path / "bad"))
    assert res.code == 0
    assert "Traceback" not in res.err
    failed = [ln for ln in res.err.splitlines() if ln.startswith("  failed:")]
    assert len(failed) == len(expected) - 1  # huge.png is fine under the default limit


def test_nonexistent_path_and_unknown_model(env, tmp_path: Path, capsys) -> None:
    res = run_cli(capsys, "index", str(tmp_path / "nope"), "--json")
    assert res.code == 0 and "no such file" in res.json()["failed"][0]["error"]
    res = run_cli(capsys, "--model", "NoSuchNet-9", "index", str(tmp_path), "--json")
    assert res.code == 1 and res.err.startswith("pixsearch: error: unknown model 'NoSuchNet-9'")
    assert res.err.count("\n") == 1


def test_invalid_setting_is_one_line(env, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PIXSEARCH_BATCH_SIZE", "lots")
    res = run_cli(capsys, "status")
    assert res.code == 1 and "batch_size" in res.err and res.err.count("\n") == 1


#: The unprivileged user a root test run switches to.
NOBODY = 65534


def _read_stage_as_nobody(folder: Path, known: set[str]) -> dict[str, str] | None:
    """{path: error} of the read stage run over the folder's files by a child process
    switched to the `nobody` user; None if no user can be switched to."""
    import json

    from indexer.reading import read
    from indexer.types import Failure, FileEntry, Job

    paths = sorted(str(p) for p in folder.iterdir())
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root for good, read, report, and leave at once
        code = 0
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            # Known content is hashed, not decoded: no model is needed here.
            jobs = [Job(FileEntry(p, 0, 0), "new") for p in paths]
            results = [read(job, known, None, 10**8) for job in jobs]
            failed = {r.path: r.error for r in results if isinstance(r, Failure)}
            os.write(wfd, json.dumps(failed).encode())
        except PermissionError:
            code = 3
        except BaseException:
            code = 4
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as fh:
        out = fh.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 3:
        return None
    assert code == 0, f"the child reading as nobody failed ({code})"
    return json.loads(out)


def test_unreadable_file_is_reported(env, photos: Path, capsys) -> None:
    locked = photos / "img_0000.jpg"
    if os.geteuid() != 0:
        locked.chmod(0)
        summary = run_cli(capsys, "index", str(photos), "--json").json()
        assert summary["failed"] == [{"path": str(locked), "error": "permission denied"}]
        return
    # Root reads every file whatever its mode (CI runs as root): the read stage runs as
    # `nobody`, over a copy in a folder that user may enter.
    import shutil
    import tempfile

    from indexer.imageio import content_hash

    shared = Path(tempfile.mkdtemp(prefix="pixsearch-nobody-"))
    try:
        shared.chmod(0o755)
        for p in photos.glob("*.jpg"):
            shutil.copy(p, shared / p.name)
            (shared / p.name).chmod(0o644)
        known = {content_hash(p.read_bytes()) for p in shared.iterdir()}
        (shared / locked.name).chmod(0)
        failed = _read_stage_as_nobody(shared, known)
        if failed is None:
            pytest.skip("running as root, and cannot switch to an unprivileged user")
        assert failed == {str(shared / locked.name): "permission denied"}
    finally:
        shutil.rmtree(shared)
