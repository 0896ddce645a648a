"""`gmm-triton generate` as a transaction (issue 20): a lock on --out naming its holder, every shard and the manifest
stamped with the configuration's fingerprint and checked on reuse, the final file hash-verified (also on a rerun of
a finished run), a full disk an error naming the space (injected here; tests/test_integrity.py fills a real
tmpfs), nothing of the user's deleted, non-finite samples stopped, every user-caused failure one error line, and
bytes that do not depend on the caller's thread count.

Every run is N = 19 samples of the 8×8 digits oracle (three shards), in-process."""
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch

from gmm_triton.cli import main
from gmm_triton.lab import generate

COMMON = ["--samples", "19", "--steps", "3", "--image-size", "8", "--model-batch", "4", "--shard-size", "8",
          "--batch-size", "4"]


def _argv(out, *extra, seed="7", sampler="ddim"):
    return ["generate", *COMMON, "--sampler", sampler, "--seed", seed, "--out", str(out), *extra]


def _run(argv, capsys):
    """(exit status, stderr) of one in-process run (its stdout is kept in ``_run.out``); a traceback never
    counts as an error line."""
    rc = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    _run.out = captured.out
    return rc, captured.err


def _error_line(err, cmd="generate"):
    lines = [ln for ln in err.splitlines() if ln.startswith(f"gmm-triton {cmd}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _snapshot(root):
    """Every file under ``root`` but the run's own lock file: (size, mtime, sha256)."""
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            if name == "generate.lock":
                continue
            p = os.path.join(d, name)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(open(p, "rb").read()).digest())
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (ddim, seed 7) to copy: (folder, samples.npy bytes)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(_argv(out)) == 0
    return out, (out / "samples.npy").read_bytes()


def _copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished[0], dst)
    return dst


# -- 3: the lock --------------------------------------------------------------------------------------------------
def test_a_second_run_into_a_locked_folder_fails_naming_the_holder(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    for p in ("samples.npy", "manifest.json"):
        os.remove(out / p)
    tmp_file = out / "shards" / "shard_000001.npy.tmp-4242"  # what the holder may be writing right now
    tmp_file.write_bytes(b"in progress")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from gmm_triton.lab.generate import OutputLock\n"
        "with OutputLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)"), str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(out)
        rc, err = _run(_argv(out, seed="0"), capsys)
        assert rc == 1
        line = _error_line(err)
        assert "in use by another `gmm-triton generate`" in line and f"pid {holder.pid} " in line
        assert _snapshot(out) == before  # nothing written, nothing removed (the holder's temporary file included)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (the kernel released its lock): the run goes ahead and removes the dead run's temporary
    assert main(_argv(out)) == 0
    assert (out / "samples.npy").read_bytes() == finished[1] and not tmp_file.exists()
    assert "pid" in (out / "generate.lock").read_text()


# -- 4: fingerprints ----------------------------------------------------------------------------------------------
def test_shards_of_another_configuration_are_refused_without_run_json(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    for p in ("run.json", "samples.npy", "manifest.json"):
        os.remove(out / p)
    before = _snapshot(out)
    rc, err = _run(_argv(out, seed="8"), capsys)
    assert rc == 2 and "made with another configuration" in _error_line(err)
    assert _snapshot(out) == before
    # the same configuration reuses them (the multi-node recipe: copy shards/ into one --out and rerun)
    rc, _ = _run(_argv(out), capsys)
    assert rc == 0 and (out / "samples.npy").read_bytes() == finished[1]
    assert {k: v for k, v in _snapshot(out / "shards").items()} == {
        os.path.relpath(k, "shards"): v for k, v in before.items() if k.startswith("shards")}
    records = [json.load(open(out / "shards" / f"shard_{i:06d}.json")) for i in range(3)]
    manifest = json.load(open(out / "manifest.json"))
    fp = generate.fingerprint(json.load(open(out / "run.json")))
    assert {r["config_sha256"] for r in records} == {manifest["config_sha256"]} == {fp}


# -- 5: the final file --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_final_file_is_detected_and_merged_again(finished, tmp_path, capsys, damage):
    out = _copy(finished, tmp_path)
    data = bytearray((out / "samples.npy").read_bytes())
    if damage == "flip":
        data[-3] ^= 0x10
    else:
        del data[-100:]
    (out / "samples.npy").write_bytes(bytes(data))
    rc, err = _run(_argv(out), capsys)
    assert rc == 0 and "does not match the sha256 in manifest.json" in err
    assert (out / "samples.npy").read_bytes() == finished[1]
    rc, err = _run(_argv(out), capsys)  # now verified: nothing to do
    assert rc == 0 and "is complete: nothing to do" in _run.out and "does not match" not in err


def test_the_merge_refuses_a_file_that_does_not_read_back(finished, tmp_path, capsys, monkeypatch):
    out = _copy(finished, tmp_path)
    os.remove(out / "samples.npy")
    real = generate._sha256_file
    monkeypatch.setattr(generate, "_sha256_file",
                        lambda p: "0" * 64 if ".tmp-" in os.path.basename(p) else real(p))  # storage that corrupts
    rc, err = _run(_argv(out), capsys)
    assert rc == 1 and "does not read back as written" in _error_line(err)
    assert not any(p.startswith("samples.npy") for p in os.listdir(out))


# -- 6: a full disk (injected; a real tmpfs in tests/test_integrity.py) --------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FillsUp:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (a disk that fills part-way)."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            _enospc()
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("where", ["free space", "reserve", "write"])
def test_a_full_disk_is_an_error_naming_the_space(finished, tmp_path, capsys, monkeypatch, where):
    from gmm_triton.lab import files

    out = _copy(finished, tmp_path)
    os.remove(out / "samples.npy")
    size = os.path.getsize(finished[0] / "samples.npy")
    if where == "free space":
        monkeypatch.setattr(generate.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=100))
    elif where == "reserve":
        monkeypatch.setattr(os, "posix_fallocate", _enospc)
    else:  # a filesystem without fallocate, full after 1000 bytes of the merge
        monkeypatch.setattr(os, "posix_fallocate", lambda *a: _raise(errno.EOPNOTSUPP))

        def fake_open(path, mode="r", *a, **k):
            f = open(path, mode, *a, **k)
            return _FillsUp(f, 1000) if os.path.basename(path).startswith("samples.npy.tmp-") else f
        monkeypatch.setattr(files, "open", fake_open, raising=False)
    rc, err = _run(_argv(out), capsys)
    line = _error_line(err)
    assert rc == 1 and f"{size:,} bytes" in line and "space" in line, line
    assert not any(p.startswith("samples.npy") for p in os.listdir(out))
    monkeypatch.undo()
    assert main(_argv(out)) == 0 and (out / "samples.npy").read_bytes() == finished[1]


def _raise(code):
    raise OSError(code, os.strerror(code))


# -- 7: nothing of the user's deleted -----------------------------------------------------------------------------
@pytest.mark.parametrize("change, code, message", [
    (["--sampler", "ddim-gmm", "--gmm-components", "300"], 2, "must not exceed the latent size D=64"),
    (["--seed", "8"], 2, "refusing to resume"),
    (["--batch-size", "6"], 2, "must be multiples of --model-batch"),
])
def test_a_refused_run_touches_nothing(finished, tmp_path, capsys, change, code, message):
    out = _copy(finished, tmp_path)
    (out / "notes.tmp-1").write_text("the user's")
    (out / "shards" / "mine.tmp-5").write_text("the user's")
    before = _snapshot(out)
    rc, err = _run(_argv(out, *change), capsys)
    assert rc == code and message in _error_line(err)
    assert _snapshot(out) == before


def test_a_folder_of_the_users_files_is_left_alone(tmp_path, capsys):
    """--out holds the user's samples.npy and manifest.json (no run.json) and files named like temporaries: a run
    the library refuses (K > D) and a valid one both stop with one error line, and no file is removed or changed.
    (Before, the folder's samples.npy, manifest.json and every *.tmp-* file were deleted first, then K > D ended in
    a traceback.)"""
    for name, data in (("samples.npy", b"the user's"), ("manifest.json", b"{}"), ("notes.tmp-1", b"the user's")):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "mine.tmp-5").write_bytes(b"the user's")
    before = _snapshot(tmp_path)
    rc, err = _run(_argv(tmp_path, "--sampler", "ddim-gmm", "--gmm-components", "300"), capsys)
    assert rc == 2 and "must not exceed the latent size D=64" in _error_line(err)
    assert _snapshot(tmp_path) == before
    rc, err = _run(_argv(tmp_path), capsys)
    assert rc == 2 and "refusing to overwrite" in _error_line(err)
    assert _snapshot(tmp_path) == before


# -- 8: non-finite samples -----------------------------------------------------------------------------------------
def test_non_finite_samples_stop_the_run_naming_the_shard(tmp_path, capsys):
    rc, err = _run(_argv(tmp_path, "--eta", "1e300"), capsys)
    line = _error_line(err)
    assert rc == 1 and "shard 0 (samples 0…7)" in line and "not finite" in line
    assert os.listdir(tmp_path / "shards") == [] and not (tmp_path / "samples.npy").exists()


# -- 9: one error line for each damaged input ----------------------------------------------------------------------
@pytest.mark.parametrize("damage, code, message", [
    ("record garbage", 1, "shard_000001.json (a shard record) is damaged: not valid JSON"),
    ("record empty", 1, "shard_000001.json (a shard record) is damaged: not valid JSON"),
    ("record without sha256", 1, "shard_000001.json is damaged (it lacks sha256)"),
    ("run.json garbage", 1, "run.json (the run's configuration) is damaged"),
    ("run.json a list", 1, "run.json (the run's configuration) is damaged: not a JSON object"),
    ("manifest garbage", 1, "manifest.json (the manifest) is damaged"),
])
def test_damaged_records_are_one_error_line(finished, tmp_path, capsys, damage, code, message):
    out = _copy(finished, tmp_path)
    record = out / "shards" / "shard_000001.json"
    if damage == "record garbage":
        record.write_bytes(b"\x00{not json")
    elif damage == "record empty":
        record.write_bytes(b"")
    elif damage == "record without sha256":
        rec = json.load(open(record))
        del rec["sha256"]
        record.write_text(json.dumps(rec))
    elif damage == "run.json garbage":
        (out / "run.json").write_text('{"seed": 7,')
    elif damage == "run.json a list":
        (out / "run.json").write_text("[]")
    else:
        (out / "manifest.json").write_text("")
    rc, err = _run(_argv(out), capsys)
    assert rc == code and message in _error_line(err)


def test_out_that_is_a_file_or_cannot_be_written(tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("x")
    rc, err = _run(_argv(tmp_path / "f"), capsys)
    assert rc == 2 and "--out" in _error_line(err) and "is a file" in _error_line(err)
    rc, err = _run(_argv(tmp_path / "f" / "sub"), capsys)  # a folder under a file: the OS refuses
    assert rc == 1 and "Not a directory" in _error_line(err)

    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    monkeypatch.setattr(os, "makedirs", denied)  # a read-only parent (a real read-only mount: test_integrity.py)
    rc, err = _run(_argv(tmp_path / "ro"), capsys)
    assert rc == 1 and "Permission denied" in _error_line(err)


# -- the thread count --------------------------------------------------------------------------------------------
def test_the_bytes_do_not_depend_on_the_callers_thread_count(tmp_path, capsys):
    """MKL splits a GEMM's reduction by thread count (on an AVX-512/AMX Xeon the oracle's products differ by
    2.4e-7 at 1 and 2 threads, and so did generate's bytes), so generate runs its model at --threads (default 1)
    whatever the caller set, and restores the caller's setting."""
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert main(_argv(tmp_path / str(threads), "--eta", "1", sampler="ddim-gmm")) == 0
            assert torch.get_num_threads() == threads  # restored
    finally:
        torch.set_num_threads(before)
    assert (tmp_path / "1" / "samples.npy").read_bytes() == (tmp_path / "2" / "samples.npy").read_bytes()
    assert json.load(open(tmp_path / "2" / "run.json"))["cpu_threads"] == 1
    rc, err = _run(_argv(tmp_path / "2", "--eta", "1", "--threads", "2", sampler="ddim-gmm"), capsys)
    assert rc == 2 and "cpu_threads: 1 (then) vs 2 (now)" in _error_line(err)
