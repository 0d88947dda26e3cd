"""Models folder, catalog models with companions, the download queue, catalog refresh, `roost download`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from roost.core import catalog as catalog_mod
from roost.core import paths
from roost.core.catalog import CatalogRefreshError, load_catalog, refresh_catalog
from roost.core.download import ChecksumError, DownloadError
from roost.core.library import (
    delete,
    download_target,
    from_catalog,
    import_file,
    installed,
    pending,
    target_for,
)
from roost.core.queue import CANCELLED, DONE, FAILED, PAUSED, DownloadQueue
from roost.engine.errors import NotACheckpointError
from tests.conftest import ROOT
from tests.hubserver import HubServer

RAVEN = next(m for m in load_catalog(refreshed=False) if m.version == 4)
MODEL = os.urandom(2_500_000)
TOKENIZER = b'{"version": "1.0", "model": {}}' * 2000


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ROOST_MODELS_DIR", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return tmp_path / "home"


@pytest.fixture
def hub():
    server = HubServer()
    server.add(RAVEN.repo, RAVEN.file, MODEL)
    server.add("EleutherAI/gpt-neox-20b", "tokenizer.json", TOKENIZER, lfs=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def raven():
    """The catalog's Raven entry with the facts of the bytes our server holds."""
    return replace(RAVEN, sha256=hashlib.sha256(MODEL).hexdigest(), size_bytes=len(MODEL))


def test_models_folder_is_per_user_and_can_be_chosen(tmp_path, home):
    assert paths.models_dir() == home / "models" and (home / "models").is_dir()
    from roost.core.settings import SettingsStore, load_settings

    SettingsStore().update(models_dir=str(tmp_path / "elsewhere"))
    chosen = (tmp_path / "elsewhere").resolve()
    assert paths.models_dir() == chosen and load_settings().models_dir == str(chosen)


def test_default_folder_per_platform(monkeypatch, tmp_path):
    monkeypatch.delenv("ROOST_HOME")
    monkeypatch.setattr(paths.Path, "home", lambda: tmp_path)
    for platform, expect in [("win32", tmp_path / "AppData" / "Local" / "Roost"),
                             ("darwin", tmp_path / "Library" / "Application Support" / "Roost"),
                             ("linux", tmp_path / ".local" / "share" / "roost")]:
        monkeypatch.setattr(paths.sys, "platform", platform)
        monkeypatch.delenv("LOCALAPPDATA", raising=False)
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
        assert paths.data_dir() == expect


def test_catalog_model_downloads_with_its_companion(hub, raven, tmp_path):
    folder = tmp_path / "models"
    path = download_target(from_catalog(raven), folder, endpoints={"hf": hub.hub_url})
    assert path.read_bytes() == MODEL
    assert (folder / "20B_tokenizer.json").read_bytes() == TOKENIZER
    [inst] = installed(folder, [raven])
    assert inst.model == raven and inst.missing_companions == ()
    removed = delete(path, folder, [raven])
    assert not list(folder.iterdir()) and len(removed) == 2


def test_names_resolve_to_catalog_models_or_repo_files():
    models = load_catalog(refreshed=False)
    assert target_for(RAVEN.id, models).sha256 == RAVEN.sha256
    assert target_for(RAVEN.file, models).companions
    t = target_for("BlinkDL/rwkv-7-world/sub/x.pth", models)
    assert (t.repo, t.file, t.sha256) == ("BlinkDL/rwkv-7-world", "sub/x.pth", None)
    with pytest.raises(DownloadError, match="neither a model in the catalog"):
        target_for("nonsense", models)


def test_queue_runs_jobs_pauses_resumes_and_cancels(hub, raven, tmp_path):
    hub.faults.rate = 3_000_000
    folder = tmp_path / "models"
    q = DownloadQueue(folder, endpoints={"hf": hub.hub_url}, backoff=0.01)
    states = []
    q.listen(lambda j: states.append(j.state))
    try:
        job = q.add(from_catalog(raven))
        assert q.add(from_catalog(raven)) is job  # not queued twice
        while not (job.progress and job.progress.phase == "downloading" and job.progress.done > 500_000):
            q.wait(job, 0.05)
        q.pause(job)
        assert q.wait(job, 10) and job.state == PAUSED
        assert pending(folder)[0].have >= 500_000
        hub.faults.rate = None
        q.resume(job)
        assert q.wait(job, 30) and job.state == DONE and job.path.read_bytes() == MODEL
        assert hub.range_starts("cdn")[-1] > 0 and "running" in states

        other = replace(raven, file="other.pth", id="other")
        job2 = q.add(from_catalog(other))  # not on the server
        assert q.wait(job2, 30) and job2.state == FAILED and "not found" in job2.error
        q.cancel(job2)
        assert job2.state == CANCELLED
    finally:
        q.close()


def test_queue_failures_are_plain_words_with_the_details_in_the_log(raven, tmp_path, monkeypatch, caplog):
    import roost.core.queue as queue_module

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    q = DownloadQueue(blocker / "models", backoff=0.01)  # a models folder that cannot be made
    try:
        job = q.add(from_catalog(raven))
        assert q.wait(job, 30) and job.state == FAILED
        assert job.error.startswith(f"Cannot write to {blocker / 'models'}") and "Settings" in job.error

        def broken(*a, **k):
            raise RuntimeError("internal detail 0x1234")

        monkeypatch.setattr(queue_module, "download_target", broken)
        q.configure(models_dir=tmp_path / "ok")
        other = q.add(from_catalog(replace(raven, file="other.pth", id="other")))
        assert q.wait(other, 30) and other.state == FAILED
        assert "details are in the log" in other.error and "0x1234" not in other.error
        assert "internal detail 0x1234" in caplog.text
    finally:
        q.close()


def test_closing_the_queue_mid_download_keeps_the_partial_file(hub, raven, tmp_path):
    hub.faults.rate = 1_000_000
    folder = tmp_path / "models"
    q = DownloadQueue(folder, endpoints={"hf": hub.hub_url})
    job = q.add(from_catalog(raven))
    while not (job.progress and job.progress.phase == "downloading" and job.progress.done > 200_000):
        q.wait(job, 0.05)
    q.close()
    assert job.state == PAUSED and pending(folder) and not (folder / raven.file).exists()


def test_import_checks_the_file(tmp_path, raven, make_checkpoint):
    folder = tmp_path / "models"
    ckpt = make_checkpoint("v7.0")
    inst = import_file(ckpt, folder, [raven])
    assert inst.path.read_bytes() == ckpt.read_bytes() and inst.model is None
    with pytest.raises(DownloadError, match="already exists"):
        import_file(ckpt, folder, [raven])
    junk = tmp_path / "notes.pth"
    junk.write_bytes(b"hello")
    with pytest.raises(NotACheckpointError):
        import_file(junk, folder, [raven])
    fake = tmp_path / raven.file  # a real checkpoint under an official name, other content
    fake.write_bytes(ckpt.read_bytes())
    with pytest.raises(ChecksumError, match="damaged or incomplete"):
        import_file(fake, folder, [raven])
    assert not (folder / raven.file).exists() and not list(folder.glob("*.import"))


def test_import_brings_the_tokenizer_of_another_vocabulary_and_delete_removes_it(tmp_path):
    from tokenizers import Tokenizer, models

    from roost.engine.synthetic import save_checkpoint
    from roost.engine.tokenizer import HFTokenizer, tokenizer_for_vocab

    src, folder = tmp_path / "src", tmp_path / "models"
    src.mkdir()
    words = {f"w{i}": i for i in range(290)}
    Tokenizer(models.WordLevel(words, unk_token="w0")).save(str(src / "tokenizer.json"))
    ckpt = save_checkpoint(src / "odd.pth", "v7.0", n_layer=1, n_embd=64, vocab=300)
    inst = import_file(ckpt, folder, [])
    own = folder / "odd.tokenizer.json"
    assert own.read_bytes() == (src / "tokenizer.json").read_bytes() and not (folder / "tokenizer.json").exists()
    tok = tokenizer_for_vocab(300, inst.path)
    assert isinstance(tok, HFTokenizer) and tok.path == own and tok.encode("w289") == [289]
    # a byte-level model needs no file, and none is copied for it
    save_checkpoint(src / "bytes.pth", "v7.0", n_layer=1, n_embd=64, vocab=256)
    (src / "tokenizer.json").unlink()
    import_file(src / "bytes.pth", folder, [])
    assert not (folder / "bytes.tokenizer.json").exists()
    assert [i.path.name for i in installed(folder, [])] == ["bytes.pth", "odd.pth"]
    removed = delete(inst.path, folder, [])
    assert own in removed and not own.exists() and not inst.path.exists()


def test_refresh_marks_files_removed_upstream_and_survives_offline(hub, home):
    models = load_catalog(refreshed=False)
    ravens = [m for m in models if m.repo == RAVEN.repo]
    fresh = refresh_catalog(ravens, endpoint=hub.hub_url)
    by_file = {m.file: m for m in fresh}
    assert by_file[RAVEN.file].available and by_file[RAVEN.file].size_bytes == len(MODEL)
    assert all(not m.available for m in fresh if m.file != RAVEN.file)
    again = {m.file: m for m in load_catalog()}  # remembered for the next start
    assert not again[ravens[1].file].available and again[RAVEN.file].sha256 == hashlib.sha256(MODEL).hexdigest()
    with pytest.raises(CatalogRefreshError, match="bundled"):
        refresh_catalog(ravens, endpoint="http://127.0.0.1:9")
    assert catalog_mod.cache_file().exists()


def roost(*args, env=None):
    return subprocess.run([sys.executable, "-m", "roost", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})}, check=False)


def test_cli_download_by_repo_and_file(hub, tmp_path):
    spec = f"{RAVEN.repo}/{RAVEN.file}"
    r = roost("download", spec, "--models-dir", str(tmp_path / "m"), "--endpoint", hub.hub_url)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / RAVEN.file).read_bytes() == MODEL
    assert "100.0%" in r.stderr and "verified" in r.stdout
    hub.faults.corrupt_at = 10
    r = roost("download", spec, "--models-dir", str(tmp_path / "n"), env={"HF_ENDPOINT": hub.hub_url})
    assert r.returncode == 2 and "damaged" in r.stderr
    assert not (tmp_path / "n" / RAVEN.file).exists()
    r = roost("download", f"{RAVEN.repo}/missing.pth", "--models-dir", str(tmp_path / "n"),
              "--endpoint", hub.hub_url)
    assert r.returncode == 2 and "not found" in r.stderr


@pytest.mark.parametrize("lang, tz, want", [
    ("zh_CN.UTF-8", "UTC", "mirror"), ("en_US.UTF-8", "Asia/Shanghai", "mirror"),
    ("en_US.UTF-8", "Europe/Berlin", "hf"), ("zh_TW.UTF-8", "Asia/Taipei", "hf"), ("C", "UTC", "hf"),
])
def test_source_suggestion(lang, tz, want):
    from roost.core.sources import suggested_source

    assert suggested_source(lang, tz) == want


def test_models_lists_what_is_downloaded(tmp_path):
    with open(tmp_path / RAVEN.file, "wb") as f:  # (sparse: the catalog's size, nothing written)
        f.truncate(RAVEN.size_bytes)
    other = next(m for m in load_catalog(refreshed=False) if m.version == 7)
    (tmp_path / other.file).write_bytes(b"x")  # a download cut short, copied in by hand
    r = roost("models", "--all", env={"ROOST_MODELS_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if RAVEN.file in x)
    assert "[downloaded]" in line and str(tmp_path) in r.stdout
    line = next(x for x in r.stdout.splitlines() if other.file in x)
    assert "[damaged: delete it and download it again" in line and "[downloaded]" not in line


def test_a_damaged_model_file_is_told_apart_with_what_to_do(tmp_path, make_checkpoint):
    from roost.core.library import file_problem

    whole = tmp_path / RAVEN.file
    with open(whole, "wb") as f:
        f.truncate(RAVEN.size_bytes)
    assert file_problem(whole, RAVEN) is None
    cut = tmp_path / "cut.pth"
    with open(cut, "wb") as f:
        f.truncate(RAVEN.size_bytes // 3)
    said = file_problem(cut, RAVEN)
    assert "damaged or incomplete" in said and "download it again" in said and "请删除后重新下载" in said
    mine = tmp_path / "mine.pth"
    mine.write_bytes(make_checkpoint("v7.0", n_layer=2, n_embd=128).read_bytes())
    assert file_problem(mine) is None
    mine.write_bytes(mine.read_bytes()[:5000])  # a copy not finished
    assert "does not open as an RWKV model" in file_problem(mine)


def test_model_rows_are_one_qt_free_function_for_the_page_and_the_command(tmp_path):
    """The newest release of each size, any other release that is here or partly here, and the
    user's own files; with a machine, each catalog row carries the advisor's choice (cached)."""
    import json

    from roost.core.catalog import newest_releases
    from roost.core.hardware import Machine
    from roost.core.library import model_rows

    catalog = load_catalog(refreshed=False)
    newest = {m.id for m in newest_releases(catalog)}
    old = [m for m in catalog if m.id not in newest][:2]
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / old[0].file).write_bytes(b"x")  # an older release, downloaded
    (folder / (old[1].file + ".part")).write_bytes(b"x" * 10)  # another, partly downloaded
    (folder / (old[1].file + ".part.json")).write_text(json.dumps({"sha256": old[1].sha256, "size": old[1].size_bytes}))
    (folder / "mine.safetensors").write_bytes(b"x")
    (folder / "notes.txt").write_text("not a model")
    machine = Machine(os="Linux", cpu_name="CPU", cpu_cores=8, ram_total=16 << 30, ram_free=12 << 30,
                      disk_free=100 << 30)
    cache = {}
    rows, partial = model_rows(folder, catalog, machine, advice_cache=cache)
    files = {r.file for r in rows}
    assert {m.file for m in catalog if m.id in newest} <= files
    assert old[0].file in files and old[1].file in files and "mine.safetensors" in files
    assert "notes.txt" not in files and set(partial) == {old[1].file}
    by_file = {r.file: r for r in rows}
    assert by_file[old[0].file].downloaded and not by_file[old[1].file].downloaded
    assert by_file["mine.safetensors"].model is None and by_file["mine.safetensors"].advice is None
    assert all(r.advice is not None for r in rows if r.model is not None)
    assert len(cache) == len([r for r in rows if r.model is not None])
    everything, _ = model_rows(folder, catalog, every_release=True)
    assert len(everything) == len(catalog) + 1 and all(r.advice is None for r in everything)


def test_state_files_are_personas_of_the_models_they_fit_never_models(tmp_path):
    """A state-tuning file (blocks.N.att.time_state only) has a model's suffix: the folder tells it
    by its keys, never lists it as a model, and lists it as a persona of the local models it fits."""
    import torch
    from safetensors.torch import save_file

    from roost.core.catalog import newest_releases
    from roost.core.library import is_state_file, model_rows, personas
    from roost.engine.synthetic import save_checkpoint

    def state(n_layer, n_head, head_size=64):
        return {f"blocks.{i}.att.time_state": torch.randn(n_head, head_size, head_size) for i in range(n_layer)}

    folder = tmp_path / "models"
    folder.mkdir()
    save_checkpoint(folder / "g1-small.pth", "v7.0", n_layer=2, n_embd=128, vocab=256)
    save_checkpoint(folder / "finch-small.safetensors", "v6.0", n_layer=2, n_embd=128, vocab=256)
    save_checkpoint(folder / "finch-narrow.pth", "v6.0", n_layer=2, n_embd=64, vocab=256)
    save_checkpoint(folder / "raven.pth", "v4", n_layer=2, n_embd=128, vocab=256)
    torch.save(state(2, 2), folder / "cat-girl.pth")  # fits the three 2x128 (v4 aside)
    save_file(state(2, 2), str(folder / "rwkv-x060-qa.safetensors"))  # its name says RWKV-6
    torch.save(state(2, 1), folder / "narrow-persona.pth")  # 64 wide
    torch.save(state(3, 2), folder / "deep-persona.pth")  # fits no model here
    torch.save({"blocks.0.att.time_state": torch.zeros(2, 64, 64), "blocks.2.att.time_state": torch.zeros(2, 64, 64)},
               folder / "broken-persona.pth")
    (folder / "mine.safetensors").write_bytes(b"x")  # not readable: still the user's own file, listed

    models = ["finch-narrow.pth", "finch-small.safetensors", "g1-small.pth", "mine.safetensors", "raven.pth"]
    assert [i.path.name for i in installed(folder, [])] == models
    catalog = load_catalog(refreshed=False)
    rows, _ = model_rows(folder, catalog)
    assert [r.file for r in rows if r.model is None] == models
    assert len(rows) == len(newest_releases(catalog)) + len(models)
    assert is_state_file(folder / "cat-girl.pth") and not is_state_file(folder / "g1-small.pth")

    found = {p.path.name: p for p in personas(folder, catalog)}
    assert set(found) == {"cat-girl.pth", "rwkv-x060-qa.safetensors", "narrow-persona.pth", "deep-persona.pth",
                          "broken-persona.pth"}
    cat = found["cat-girl.pth"]
    assert (cat.name, cat.n_layer, cat.n_embd, cat.head_size) == ("cat-girl", 2, 128, 64)
    assert cat.version is None and cat.problem is None
    assert cat.fits == ("finch-small.safetensors", "g1-small.pth")
    assert found["rwkv-x060-qa.safetensors"].fits == ("finch-small.safetensors",)
    assert found["rwkv-x060-qa.safetensors"].version == 6
    assert found["narrow-persona.pth"].fits == ("finch-narrow.pth",)
    assert found["deep-persona.pth"].fits == ()
    broken = found["broken-persona.pth"]
    assert broken.fits == () and "layers [1] are missing" in broken.problem
    assert personas(tmp_path / "nowhere") == []
