"""The download manager against a local Hub/CDN/ModelScope server with injected faults."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from roost.core import download
from roost.core.download import (
    ChecksumError,
    Control,
    DiskSpaceError,
    NetworkError,
    NotFoundError,
    StoppedError,
    download_file,
)
from roost.core.sources import HUB, MIRROR, MODELSCOPE, candidates
from tests.conftest import ROOT
from tests.hubserver import HubServer

REPO = "BlinkDL/rwkv-7-world"
NAME = "RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth"
DATA = os.urandom(3 * 1024 * 1024 + 12345)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def hub():
    server = HubServer()
    server.add(REPO, NAME, DATA)
    server.start()
    yield server
    server.stop()


def cands(hub, host=HUB, preferred=HUB, name=NAME, repo=REPO, mirror=None):
    return candidates(repo, name, host, preferred,
                      {HUB: hub.hub_url, MODELSCOPE: hub.hub_url, MIRROR: mirror or hub.hub_url})


def get(hub, tmp_path, **kw):
    kw.setdefault("sha256", SHA)
    kw.setdefault("size", len(DATA))
    kw.setdefault("backoff", 0.01)
    return download_file(kw.pop("cands", None) or cands(hub), tmp_path / NAME, **kw)


def assert_clean(tmp_path):
    assert (tmp_path / NAME).read_bytes() == DATA
    assert not list(tmp_path.glob("*.part*"))


def test_complete_download_through_the_cdn_with_progress(hub, tmp_path):
    seen = []
    get(hub, tmp_path, progress=seen.append)
    assert_clean(tmp_path)
    assert [o for o, m, _p, _r in hub.log if m == "GET"] == ["cdn"]  # bytes came from the CDN origin
    assert seen[-1].phase == "done" and seen[-1].done == len(DATA) and seen[-1].fraction == 1.0
    assert any(p.phase == "downloading" for p in seen)


def test_without_catalog_facts_the_hub_sha256_is_checked(hub, tmp_path):
    hub.faults.corrupt_at = 100
    with pytest.raises(ChecksumError):
        get(hub, tmp_path, sha256=None, size=None)
    assert not list(tmp_path.iterdir())


def test_small_non_lfs_file_is_checked_against_its_git_etag(hub, tmp_path):
    tok = b'{"model": {"vocab": {}}}' * 100
    hub.add("EleutherAI/gpt-neox-20b", "tokenizer.json", tok, lfs=False)
    c = candidates("EleutherAI/gpt-neox-20b", "tokenizer.json", overrides={HUB: hub.hub_url})
    out = download_file(c, tmp_path / "20B_tokenizer.json")
    assert out.read_bytes() == tok
    hub.faults.corrupt_at = 5
    with pytest.raises(ChecksumError):
        download_file(c, tmp_path / "again.json", backoff=0.01)


def test_dropped_connections_resume_with_range(hub, tmp_path):
    hub.faults.drop_after, hub.faults.drop_times = 1_000_000, 2
    get(hub, tmp_path)
    assert_clean(tmp_path)
    starts = hub.range_starts("cdn")
    assert starts[0] == 0 and len(starts) == 3 and starts[1] >= 900_000 and starts[2] > starts[1]


def test_truncated_body_resumes(hub, tmp_path):
    hub.faults.truncate_to, hub.faults.truncate_times = 2_000_000, 1
    get(hub, tmp_path)
    assert_clean(tmp_path)
    assert len(hub.range_starts("cdn")) == 2


def test_a_stall_times_out_and_resumes(hub, tmp_path):
    hub.faults.stall_after, hub.faults.stall_seconds, hub.faults.stall_times = 500_000, 3.0, 1
    get(hub, tmp_path, timeout=0.5)
    assert_clean(tmp_path)
    assert hub.range_starts("cdn")[-1] > 0


def test_range_ignored_restarts_cleanly(hub, tmp_path):
    hub.faults.drop_after, hub.faults.drop_times = 1_500_000, 1
    hub.faults.ignore_range = 1
    get(hub, tmp_path)
    assert_clean(tmp_path)
    assert len(hub.range_starts("cdn")) == 3  # full, ranged (answered 200), then full again


def test_corrupt_bytes_are_rejected_and_nothing_loadable_is_kept(hub, tmp_path):
    hub.faults.corrupt_at = 2_000_000
    with pytest.raises(ChecksumError, match="damaged"):
        get(hub, tmp_path)
    assert not list(tmp_path.iterdir())


def test_missing_file_and_missing_repo_say_so(hub, tmp_path):
    with pytest.raises(NotFoundError, match="not found on any download source"):
        get(hub, tmp_path, cands=cands(hub, name="gone.pth"))
    with pytest.raises(NotFoundError):
        get(hub, tmp_path, cands=cands(hub, repo="BlinkDL/nothing-here"))


def test_mirror_without_the_file_falls_back_to_the_hub(hub, tmp_path):
    mirror = HubServer().start()
    try:
        mirror.faults.not_found = True
        c = cands(hub, preferred=MIRROR, mirror=mirror.hub_url)
        assert [x.source for x in c] == [MIRROR, HUB]
        get(hub, tmp_path, cands=c)
        assert_clean(tmp_path)
        assert mirror.log  # it was asked first
    finally:
        mirror.stop()


def test_modelscope_file_with_range_resume(hub, tmp_path):
    hub.add("Blink_DL/rwkv7-g1", NAME, DATA, host="modelscope")
    hub.faults.drop_after, hub.faults.drop_times = 800_000, 1
    c = cands(hub, host=MODELSCOPE, repo="Blink_DL/rwkv7-g1")
    assert [x.source for x in c] == [MODELSCOPE]
    get(hub, tmp_path, cands=c)
    assert_clean(tmp_path)
    gets = [p for o, m, p, _r in hub.log if m == "GET"]
    assert gets and all(p.startswith("/models/Blink_DL/rwkv7-g1/resolve/master/") for p in gets)
    assert hub.range_starts()[-1] >= 700_000


def test_unreachable_source_gives_a_network_error(tmp_path):
    c = candidates(REPO, NAME, overrides={HUB: "http://127.0.0.1:9"})
    with pytest.raises(NetworkError, match="internet connection") as e:
        download_file(c, tmp_path / NAME, sha256=SHA, size=len(DATA), backoff=0.01, max_attempts=2)
    assert "from Hugging Face." in str(e.value) and "Errno" not in str(e.value) and "refused" not in str(e.value)


@pytest.mark.parametrize("host, preferred, names", [(HUB, HUB, "Hugging Face"),
                                                    (MODELSCOPE, HUB, "ModelScope")])  # only published there
def test_offline_is_said_at_once_naming_the_sources_tried(tmp_path, host, preferred, names):
    """No name lookup works (offline): no half-minute of retries, and one plain sentence."""
    nowhere = "http://roost-offline.invalid"
    c = candidates(REPO, NAME, host, preferred, {HUB: nowhere, MIRROR: nowhere, MODELSCOPE: nowhere})
    t0 = time.monotonic()
    with pytest.raises(download.OfflineError) as e:
        download_file(c, tmp_path / NAME, sha256=SHA, size=len(DATA), backoff=1.0)  # real back-off
    assert time.monotonic() - t0 < 5
    message = str(e.value)
    assert message.startswith(f"Could not reach {names} to download {NAME}: this computer seems to be offline.")
    assert "proxy" in message and "Errno" not in message and "urlopen" not in message and "无法连接" in message


def stop_after(control: Control, nbytes: int, cancel: bool = False):
    def on_progress(p):
        if p.phase == "downloading" and p.done >= nbytes:
            control.cancel() if cancel else control.pause()
    return on_progress


def test_pause_keeps_the_bytes_and_resume_continues(hub, tmp_path):
    hub.faults.rate = 4_000_000
    control = Control()
    with pytest.raises(StoppedError) as e:
        get(hub, tmp_path, control=control, progress=stop_after(control, 1_000_000))
    assert not e.value.cancelled
    part = tmp_path / (NAME + ".part")
    kept = part.stat().st_size
    assert kept >= 1_000_000 and json.loads((tmp_path / (NAME + ".part.json")).read_text())["sha256"] == SHA
    hub.faults.rate = None
    get(hub, tmp_path)
    assert_clean(tmp_path)
    assert hub.range_starts("cdn")[-1] == kept


def test_cancel_deletes_the_partial_file(hub, tmp_path):
    hub.faults.rate = 4_000_000
    control = Control()
    with pytest.raises(StoppedError) as e:
        get(hub, tmp_path, control=control, progress=stop_after(control, 500_000, cancel=True))
    assert e.value.cancelled
    assert not list(tmp_path.iterdir())


def test_a_stale_partial_of_another_file_version_is_discarded(hub, tmp_path):
    (tmp_path / (NAME + ".part")).write_bytes(b"x" * 1000)
    (tmp_path / (NAME + ".part.json")).write_text(json.dumps({"sha256": "0" * 64, "size": 5}))
    get(hub, tmp_path)
    assert_clean(tmp_path)
    assert hub.range_starts("cdn") == [0]


def test_not_enough_disk_is_refused_before_starting(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "disk_free", lambda folder: 1_000_000)
    with pytest.raises(DiskSpaceError, match="Not enough disk space"):
        get(hub, tmp_path)
    assert not list(tmp_path.glob("*.part"))
    assert not [m for _o, m, _p, _r in hub.log if m == "GET"]


def test_disk_full_while_writing_keeps_what_arrived(hub, tmp_path, monkeypatch):
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, b):
            if self.n + len(b) > 1_500_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.n += len(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if mode == "ab" else f

    monkeypatch.setattr(download, "open", fake_open, raising=False)
    with pytest.raises(DiskSpaceError, match="filled up"):
        get(hub, tmp_path)
    monkeypatch.undo()
    get(hub, tmp_path)  # space freed: it resumes
    assert_clean(tmp_path)
    assert hub.range_starts("cdn")[-1] > 0


def test_progress_reports_speed_and_eta_on_a_slow_link(hub, tmp_path):
    hub.faults.rate = 2_000_000
    seen = []
    get(hub, tmp_path, progress=seen.append)
    mid = [p for p in seen if p.phase == "downloading" and p.speed > 0 and p.eta is not None]
    assert mid
    assert all(200_000 < p.speed < 20_000_000 for p in mid[len(mid) // 2:])


CHILD = """
import sys
from roost.core.download import download_file
from roost.core.sources import candidates
c = candidates(sys.argv[1], sys.argv[2], overrides={"hf": sys.argv[3]})
download_file(c, sys.argv[4], sha256=sys.argv[5])
"""


def test_resume_after_the_downloading_process_is_killed(hub, tmp_path):
    hub.faults.rate = 1_500_000
    dest = tmp_path / NAME
    part = tmp_path / (NAME + ".part")
    child = subprocess.Popen([sys.executable, "-c", CHILD, REPO, NAME, hub.hub_url, str(dest), SHA],
                             cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 1_000_000):
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    kept = part.stat().st_size
    assert 1_000_000 <= kept < len(DATA) and not dest.exists()
    hub.faults.rate = None
    get(hub, tmp_path)
    assert_clean(tmp_path)
    assert hub.range_starts("cdn")[-1] == kept
