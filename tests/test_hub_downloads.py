"""What `perceiver.hub.fetch` keeps: never a bad file, whatever the server or the disk does.

The server (conftest's `http_server`) listens on 127.0.0.1 and stops by itself
within 30 s; nothing else is ever contacted.
"""

import errno
import gzip
import json
import os
import pathlib
import time

import pytest

import reference_fixtures as ref
from perceiver import checkpoint, cli, hub, loading

TIMEOUT = 2.0  # Seconds; every network wait in these tests is bounded by it.
SMALL = pathlib.Path(__file__).parent / "data" / "reference" / "flow.pystate"
ENTRY = hub.CHECKPOINTS["flow"]


def _send(body, content_type="application/octet-stream", length=True, cut=None, **headers):
    """A route answering 200 with `body`; `cut` sends only that many bytes, then hangs up."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        if length is True:
            handler.send_header("Content-Length", str(len(body)))
        elif length is not None:
            handler.send_header("Content-Length", str(length))
        for key, value in headers.items():
            handler.send_header(key.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(body if cut is None else body[:cut])
        handler.close_connection = True

    return route


def _small_tree():
    return checkpoint.load(SMALL)


def _verify_small(path):
    # The small reference flow model stands in for the published one.
    loading.check_checkpoint(path, ENTRY, expected=_small_tree())


def _fetch(**kwargs):
    kwargs = {"progress": False, "timeout": TIMEOUT, "verify": _verify_small, **kwargs}
    return hub.fetch("flow", **kwargs)


def _listing(tmp_path):
    cache = tmp_path / "cache"
    return sorted(os.listdir(cache)) if cache.is_dir() else []


def _refused(tmp_path, fetch=_fetch, **kwargs):
    """The FetchError of a refused download, after checking it left nothing behind."""
    with pytest.raises(hub.FetchError) as info:
        fetch(**kwargs)
    message = str(info.value)
    assert f"/{ENTRY.filename}" in message  # The URL ...
    assert str(tmp_path / "cache" / ENTRY.filename) in message  # ... the target ...
    assert "by hand" in message  # ... and the way out.
    assert _listing(tmp_path) == []  # No checkpoint and no temporary file.
    return message


# ---------------------------------------------------------------------------
# What the server sends
# ---------------------------------------------------------------------------


def _endless(handler):
    # A body with no length and no end, until the client hangs up.
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.end_headers()
    chunk = b"\x80" * (1 << 16)
    for _ in range(4096):  # Bounded all the same: 256 MiB.
        handler.wfile.write(chunk)
    handler.close_connection = True


def test_an_endless_body_is_cut_off(http_server, tmp_path, monkeypatch):
    monkeypatch.setattr(hub.Checkpoint, "max_bytes", property(lambda self: 1 << 20))
    http_server.routes[ENTRY.filename] = _endless
    message = _refused(tmp_path)
    assert f"more than {1 << 20} bytes" in message


def _dripping(head: bytes, piece, count: int, pause: float):
    """A route sending `head`, then `piece(i)` for i < count every `pause` s: each read in time."""

    def route(handler):
        handler.wfile.write(head)
        for i in range(count):  # Bounded: count * pause seconds.
            handler.wfile.write(piece(i))  # A hung-up client: ConnectionError, caught above.
            handler.wfile.flush()
            time.sleep(pause)
        handler.close_connection = True

    return route


_OK_HEAD = b"HTTP/1.1 200 OK\r\n"
_BODY_HEAD = _OK_HEAD + b"Content-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n"


@pytest.mark.parametrize(
    "head, piece, count, pause, most, says",
    [
        # The body: a byte every 0.1 s for 10 s; only a rate floor ends it.
        (_BODY_HEAD, lambda i: b"\x80", 100, 0.1, 5, "slowed to"),
        # The headers: a line every 0.2 s for 8 s; only a deadline ends them.
        (_OK_HEAD, lambda i: b"X-Slow-%d: 1\r\n" % i, 40, 0.2, 4, "within 1.5 s"),
    ],
    ids=["body", "headers"],
)
def test_a_server_that_drips_is_given_up_on(http_server, tmp_path, head, piece, count, pause, most, says):
    http_server.routes[ENTRY.filename] = _dripping(head, piece, count, pause)
    start = time.monotonic()
    message = _refused(tmp_path, timeout=0.5)
    assert time.monotonic() - start < most < count * pause  # Long before the drip ends.
    assert says in message


def test_an_announced_length_too_large_is_refused_before_reading(http_server, tmp_path):
    huge = ENTRY.max_bytes + 1
    http_server.routes[ENTRY.filename] = _send(SMALL.read_bytes(), length=huge)
    message = _refused(tmp_path)
    assert f"announces {huge} bytes" in message


def test_max_bytes_covers_each_published_file():
    # The counts are those of the reference's recorded full-size trees.
    import numpy as np

    trees = json.loads((pathlib.Path(__file__).parent / "data" / "reference" / "param_trees.json").read_text())
    for entry in hub.CHECKPOINTS.values():
        full = trees[entry.name]["full"]
        count = {part: sum(int(np.prod(shape)) for leaves in full[part].values() for shape in leaves.values())
                 for part in ("params", "state")}
        assert entry.num_parameters == count["params"], entry.name
        assert entry.max_bytes > 2 * 4 * (count["params"] + count["state"])  # A real file fits.


def test_a_small_checkpoint_is_kept(http_server, tmp_path):
    http_server.routes[ENTRY.filename] = _send(SMALL.read_bytes())
    path = _fetch()
    assert path.read_bytes() == SMALL.read_bytes()
    assert _listing(tmp_path) == [ENTRY.filename]
    headers, = http_server.request_headers
    assert headers["Accept-Encoding"] == "identity"


def test_html_page_is_refused(http_server, tmp_path):
    http_server.routes[ENTRY.filename] = _send(b"<html>Please log in</html>", "text/html; charset=utf-8")
    message = _refused(tmp_path)
    assert "HTML page (text/html)" in message and "captive portal" in message


def test_redirect_to_html_page_is_refused(http_server, tmp_path):
    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", f"{http_server.url}/login")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    http_server.routes[ENTRY.filename] = redirect
    http_server.routes["login"] = _send(b"<!DOCTYPE html><p>Wi-Fi login</p>", "text/html")
    message = _refused(tmp_path)
    assert "HTML page" in message and f"{http_server.url}/login" in message


@pytest.mark.parametrize("content_type", ["text/plain", "application/json"])
def test_text_is_refused(http_server, tmp_path, content_type):
    http_server.routes[ENTRY.filename] = _send(b"Service unavailable", content_type)
    assert f"text ({content_type})" in _refused(tmp_path)


def test_html_without_its_type_is_refused_by_content(http_server, tmp_path):
    http_server.routes[ENTRY.filename] = _send(b"  <!DOCTYPE html><html>portal</html>")
    assert "HTML page" in _refused(tmp_path)


def test_content_length_shorter_than_body(http_server, tmp_path):
    # The lengths agree with each other, so only reading the file shows it is cut.
    body = SMALL.read_bytes()
    http_server.routes[ENTRY.filename] = _send(body, length=len(body) - 1000)
    assert "not this checkpoint" in _refused(tmp_path)


def test_body_cut_short_without_content_length(http_server, tmp_path):
    body = SMALL.read_bytes()
    http_server.routes[ENTRY.filename] = _send(body, length=None, cut=len(body) // 2)
    assert "not this checkpoint" in _refused(tmp_path)


def test_body_cut_short_of_content_length(http_server, tmp_path):
    body = SMALL.read_bytes()
    http_server.routes[ENTRY.filename] = _send(body, cut=len(body) // 2)
    assert f"of {len(body)} bytes" in _refused(tmp_path)


def test_gzip_encoding_is_refused(http_server, tmp_path):
    body = gzip.compress(SMALL.read_bytes())
    http_server.routes[ENTRY.filename] = _send(body, Content_Encoding="gzip")
    assert "'gzip'" in _refused(tmp_path)


def test_status_other_than_200_is_refused(http_server, tmp_path):
    def partial(handler):
        handler.send_response(203, "Non-Authoritative Information")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    http_server.routes[ENTRY.filename] = partial
    assert "203" in _refused(tmp_path)


def test_checkpoint_of_another_model_is_refused(http_server, tmp_path):
    other = SMALL.with_name("imagenet_fourier.pystate").read_bytes()
    http_server.routes[ENTRY.filename] = _send(other)
    assert "do not match" in _refused(tmp_path)


def test_loading_checks_for_the_published_model(http_server, tmp_path):
    # A real checkpoint of the small flow model is not the published flow file.
    http_server.routes[ENTRY.filename] = _send(SMALL.read_bytes())
    kwargs = {"name_or_path": "flow", "progress": False, "timeout": TIMEOUT}
    assert "do not match" in _refused(tmp_path, loading.fetch, **kwargs)


def test_the_hub_alone_checks_only_the_transfer(http_server, tmp_path):
    # The hub knows no model: what the content must be is its caller's to say.
    http_server.routes[ENTRY.filename] = _send(SMALL.read_bytes())
    assert _fetch(verify=None).read_bytes() == SMALL.read_bytes()


def test_messages_quote_at_most_200_characters_of_the_server(http_server, tmp_path):
    noise = "x" * 5000
    http_server.routes[ENTRY.filename] = _send(b"hello", "text/" + noise)

    def long_reason(handler):
        handler.send_response(500, "Broken " + noise)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    assert len(_refused(tmp_path)) < 600
    http_server.routes[ENTRY.filename] = long_reason
    assert len(_refused(tmp_path)) < 600


# ---------------------------------------------------------------------------
# What the disk does, and Ctrl-C
# ---------------------------------------------------------------------------


def _assert_save_error(info, http_server, target):
    message = str(info.value)
    assert f"{http_server.url}/{ENTRY.filename}" in message
    assert str(target) in message
    assert "by hand" in message and "writable" in message


def test_cache_that_cannot_be_created(http_server, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    cache = tmp_path / "file" / "cache"
    monkeypatch.setenv("PERCEIVER_CACHE", str(cache))
    with pytest.raises(hub.FetchError) as info:
        _fetch()
    _assert_save_error(info, http_server, cache / ENTRY.filename)
    assert http_server.requests == []  # Failed before any download.


def test_read_only_cache(http_server, tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir()
    http_server.routes[ENTRY.filename] = _send(SMALL.read_bytes())

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    # Root ignores permissions, so the disk's refusals are simulated; on a
    # read-only disk even unlinking a missing file fails.
    monkeypatch.setattr(hub, "open", read_only, raising=False)
    monkeypatch.setattr(pathlib.Path, "unlink", read_only)
    with pytest.raises(hub.FetchError) as info:
        _fetch()
    _assert_save_error(info, http_server, tmp_path / "cache" / ENTRY.filename)
    assert "Read-only file system" in str(info.value)


def test_disk_full_while_writing(http_server, tmp_path, monkeypatch):
    http_server.routes[ENTRY.filename] = _send(SMALL.read_bytes())

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *args):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hub, "open", lambda *args: Full(open(*args)), raising=False)
    with pytest.raises(hub.FetchError) as info:
        _fetch()
    _assert_save_error(info, http_server, tmp_path / "cache" / ENTRY.filename)
    assert _listing(tmp_path) == []


def test_ctrl_c_removes_the_temporary_file_and_goes_through(http_server, tmp_path, monkeypatch):
    http_server.routes[ENTRY.filename] = _send(SMALL.read_bytes())

    class Interrupting:
        def update(self, n):
            assert _listing(tmp_path)  # The temporary file exists now ...
            raise KeyboardInterrupt

        def close(self):
            pass

    monkeypatch.setattr(hub, "_progress_bar", lambda *args: Interrupting())
    with pytest.raises(KeyboardInterrupt):
        _fetch()
    assert _listing(tmp_path) == []  # ... and is gone.


def test_ctrl_c_while_checking(http_server, tmp_path):
    http_server.routes[ENTRY.filename] = _send(SMALL.read_bytes())

    def interrupted(path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fetch(verify=interrupted)
    assert _listing(tmp_path) == []


def test_stale_temporary_files_are_removed(http_server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ENTRY.filename).write_bytes(SMALL.read_bytes())
    old = cache / f"{ENTRY.filename}.0123456789ab.part"
    live = cache / f"{ENTRY.filename}.ba9876543210.part"  # A concurrent download's.
    other = cache / f"{hub.CHECKPOINTS['mlm'].filename}.0123456789ab.part"
    mine = cache / "notes.part"
    for path in (old, live, other, mine):
        path.write_bytes(b"partial")
    day_ago = time.time() - 24 * 3600
    for path in (old, other, mine):
        os.utime(path, (day_ago, day_ago))
    _fetch()  # A cache hit cleans up too.
    assert not old.exists()
    assert live.exists() and other.exists() and mine.exists()
    assert http_server.requests == []


# ---------------------------------------------------------------------------
# A bad file in the cache
# ---------------------------------------------------------------------------


def _bad_cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ENTRY.filename).write_bytes(b"<html>portal</html>")
    return cache / ENTRY.filename


def test_force_replaces_a_bad_cached_file(http_server, tmp_path):
    target = _bad_cache(tmp_path)
    http_server.routes[ENTRY.filename] = _send(SMALL.read_bytes())
    assert _fetch() == target and target.read_bytes() == b"<html>portal</html>"  # Not read again.
    assert _fetch(force=True) == target
    assert target.read_bytes() == SMALL.read_bytes()


def test_failed_force_keeps_the_cached_file(http_server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ENTRY.filename).write_bytes(SMALL.read_bytes())
    http_server.routes[ENTRY.filename] = _send(b"<html>portal</html>", "text/html")
    with pytest.raises(hub.FetchError):
        _fetch(force=True)
    assert os.listdir(cache) == [ENTRY.filename]
    assert (cache / ENTRY.filename).read_bytes() == SMALL.read_bytes()


def test_pretrained_says_how_to_replace_a_bad_cached_file(tmp_path):
    from perceiver import models

    target = _bad_cache(tmp_path)
    with pytest.raises(checkpoint.CheckpointError) as info:
        models.pretrained("flow", cache_dir=tmp_path / "cache", progress=False)
    assert str(target) in str(info.value)
    assert "run `perceiver fetch flow --force` to download it again" in str(info.value)


def test_flow_and_imagenet_tasks_say_how_to_replace_a_bad_cached_file(tmp_path):
    from perceiver.tasks import flow, imagenet

    cache = tmp_path / "cache"
    cache.mkdir()
    # Small reference checkpoints under the published names: readable, but
    # not the published model, as a partial or stale file would be.
    for name, task in (("flow", flow.OpticalFlow), ("imagenet_conv", imagenet.ImageClassifier)):
        target = cache / hub.get(name).filename
        target.write_bytes(ref.checkpoint_path(name).read_bytes())
        with pytest.raises(checkpoint.CheckpointError) as info:
            task.from_pretrained(name, cache_dir=cache, progress=False)
        assert f"run `perceiver fetch {name} --force`" in str(info.value), name
        assert str(target) in str(info.value)
        # A copy of the same file under its own path gets no cache advice.
        own = tmp_path / f"{name}_own.pystate"
        own.write_bytes(target.read_bytes())
        with pytest.raises(checkpoint.CheckpointError) as info:
            task.from_pretrained(str(own), progress=False)
        assert "--force" not in str(info.value)


def test_bad_cache_error_keeps_the_error_attributes():
    error = checkpoint.CheckpointError("params do not match the model")
    error.differences = ["missing a/w"]
    new = hub.bad_cache_error("flow", "/cache/flow.pystate", error)
    assert isinstance(new, checkpoint.CheckpointError) and new.differences == ["missing a/w"]
    assert str(new).startswith("the cached checkpoint 'flow' at /cache/flow.pystate cannot be used")
    assert str(new).endswith("params do not match the model")


def test_task_loading_says_how_to_replace_a_bad_cached_file(tmp_path):
    from perceiver.tasks import _loading

    target = _bad_cache(tmp_path)
    with pytest.raises(checkpoint.CheckpointError) as info:
        _loading.build_from_checkpoint(lambda p, s: None, "flow", cache_dir=tmp_path / "cache")
    assert str(target) in str(info.value)
    assert "perceiver fetch flow --force" in str(info.value)

    def misfit(params, state):
        raise checkpoint.CheckpointError("params do not match the model")

    target.write_bytes(SMALL.read_bytes())  # Readable now, but `build` refuses it.
    with pytest.raises(checkpoint.CheckpointError) as info:
        _loading.build_from_checkpoint(misfit, "flow", cache_dir=tmp_path / "cache")
    assert "perceiver fetch flow --force" in str(info.value)
    assert "do not match" in str(info.value)

    # A file of the user's own gets no advice about the cache.
    with pytest.raises(checkpoint.CheckpointError) as info:
        _loading.build_from_checkpoint(misfit, str(target))
    assert "--force" not in str(info.value)


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def test_cli_fetch_of_a_portal_page_fails_and_caches_nothing(http_server, tmp_path, capsys):
    http_server.routes[ENTRY.filename] = _send(b"<html>Please log in</html>", "text/html")
    assert cli.main(["fetch", "flow"]) != 0
    assert "HTML page" in capsys.readouterr().err
    assert _listing(tmp_path) == []


def test_cli_fetch_force(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(hub, "fetch", lambda name, **kwargs: calls.append(kwargs) or "here")
    assert cli.main(["fetch", "flow", "--force"]) == 0
    assert cli.main(["fetch", "flow"]) == 0
    assert [c["force"] for c in calls] == [True, False]
