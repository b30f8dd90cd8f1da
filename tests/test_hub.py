"""The checkpoint registry and downloader (`perceiver.hub`).

Downloads come from an HTTP server on 127.0.0.1 (conftest's `http_server`, via
PERCEIVER_BASE_URL); nothing else is ever contacted.
"""

import dataclasses
import os
import socket
import subprocess
import sys

import pytest

from perceiver import hub

TIMEOUT = 2.0  # Seconds; every network wait in these tests is bounded by it.


def _no_length(body):
    """A route sending `body` without a Content-Length."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        handler.wfile.write(body)

    return route


def _truncated(body):
    """A route announcing the whole `body`, sending a third, and hanging up."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 3])
        handler.wfile.flush()
        handler.close_connection = True

    return route


def _stalled(handler):
    # Answers nothing for longer than the client waits (until the server stops).
    handler.server.stop.wait(TIMEOUT * 2)


def _payload(size=3 * 2**20 + 17):
    # Larger than the downloader's chunk, so the copy loop runs several times.
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


def _accept(path):
    # These tests are about the transfer, so any body is kept; what fetch
    # keeps by default is tested in test_hub_downloads.py.
    pass


def _cache_listing(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


def test_registry_contents():
    base = "https://storage.googleapis.com/perceiver_io/"
    expected = {
        "mlm": ("language_perceiver_io_bytes.pickle", "masked_language_model", {}),
        "imagenet_learned": (
            "imagenet_learned_position_encoding.pystate",
            "imagenet_classifier",
            {"variant": "learned_position_encoding"},
        ),
        "imagenet_fourier": (
            "imagenet_fourier_position_encoding.pystate",
            "imagenet_classifier",
            {"variant": "fourier_position_encoding"},
        ),
        "imagenet_conv": (
            "imagenet_conv_preprocessing.pystate",
            "imagenet_classifier",
            {"variant": "conv_preprocessing"},
        ),
        "flow": ("optical_flow_checkpoint.pystate", "optical_flow", {}),
        "video_autoencoding": (
            "video_autoencoding_checkpoint.pystate",
            "video_autoencoder",
            {},
        ),
    }
    assert sorted(hub.CHECKPOINTS) == sorted(expected)
    for name, (filename, factory, kwargs) in expected.items():
        entry = hub.CHECKPOINTS[name]
        assert isinstance(entry, hub.Checkpoint)
        assert entry.name == name
        assert entry.filename == filename
        assert entry.url == base + filename
        assert entry.factory == factory
        assert dict(entry.factory_kwargs) == kwargs
        assert entry.description
        assert hub.get(name) is entry


def test_checkpoint_is_frozen_and_hashable():
    entry = hub.CHECKPOINTS["imagenet_conv"]
    assert [f.name for f in dataclasses.fields(entry)] == [
        "name", "url", "filename", "factory", "factory_kwargs", "description", "num_parameters",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.url = "http://127.0.0.1/elsewhere"
    with pytest.raises(TypeError):
        entry.factory_kwargs["variant"] = "other"  # The registry cannot be changed by accident.
    assert len({entry, hub.CHECKPOINTS["imagenet_conv"]}) == 1


def test_hub_does_not_import_models_or_jax():
    code = (
        "import sys, perceiver.hub; "
        "bad = [m for m in ('perceiver.models', 'jax', 'haiku') if m in sys.modules]; "
        "sys.exit(', '.join(bad) or None)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(hub.__file__))),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_get_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as info:
        hub.get("imagenet")
    for name in hub.CHECKPOINTS:
        assert name in str(info.value)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEIVER_CACHE", str(tmp_path / "here"))
    assert hub.cache_dir() == tmp_path / "here"
    monkeypatch.delenv("PERCEIVER_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "perceiver"


# ---------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------


def test_download_then_cache_hit(http_server, tmp_path):
    entry = hub.CHECKPOINTS["flow"]
    body = _payload()
    (http_server.folder / entry.filename).write_bytes(body)

    path = hub.fetch("flow", progress=False, timeout=TIMEOUT, verify=_accept)
    assert path == tmp_path / "cache" / entry.filename
    assert path.read_bytes() == body
    assert http_server.requests == [entry.filename]
    assert _cache_listing(tmp_path / "cache") == [entry.filename]  # No temp files left.

    # The second call reads the cache: no request at all.
    assert hub.fetch("flow", progress=False, timeout=TIMEOUT) == path
    assert http_server.requests == [entry.filename]


def test_cache_hit_needs_no_server(monkeypatch, tmp_path):
    entry = hub.CHECKPOINTS["mlm"]
    (tmp_path / entry.filename).write_bytes(b"cached")
    # Any connection attempt would fail: the base URL is a closed port.
    monkeypatch.setenv("PERCEIVER_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    assert hub.fetch("mlm", cache_dir=tmp_path, progress=False) == tmp_path / entry.filename


def test_explicit_cache_dir_is_created(http_server, tmp_path):
    entry = hub.CHECKPOINTS["mlm"]
    (http_server.folder / entry.filename).write_bytes(b"weights")
    where = tmp_path / "a" / "b"
    path = hub.fetch("mlm", cache_dir=str(where), progress=False, timeout=TIMEOUT, verify=_accept)
    assert path == where / entry.filename and path.read_bytes() == b"weights"


def test_download_without_content_length(http_server, tmp_path):
    entry = hub.CHECKPOINTS["video_autoencoding"]
    http_server.routes[entry.filename] = _no_length(_payload(100_000))
    path = hub.fetch("video_autoencoding", progress=False, timeout=TIMEOUT, verify=_accept)
    assert path.read_bytes() == _payload(100_000)


def _terminal(monkeypatch):
    """Bars are drawn only on a terminal; under pytest stderr is captured."""
    monkeypatch.setattr(hub._progress, "shown", lambda requested: requested)


def test_progress_text_without_tqdm(http_server, monkeypatch, capsys):
    _terminal(monkeypatch)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now fails.
    entry = hub.CHECKPOINTS["imagenet_learned"]
    (http_server.folder / entry.filename).write_bytes(_payload())
    hub.fetch("imagenet_learned", progress=True, timeout=TIMEOUT, verify=_accept)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "100%" in captured.err and entry.filename in captured.err
    assert captured.err.endswith("\n")


def test_progress_false_is_silent(http_server, capsys):
    entry = hub.CHECKPOINTS["imagenet_learned"]
    (http_server.folder / entry.filename).write_bytes(_payload())
    hub.fetch("imagenet_learned", progress=False, timeout=TIMEOUT, verify=_accept)
    assert capsys.readouterr() == ("", "")


def test_progress_is_left_out_of_logs(http_server, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    entry = hub.CHECKPOINTS["imagenet_learned"]
    (http_server.folder / entry.filename).write_bytes(_payload())
    hub.fetch("imagenet_learned", progress=True, timeout=TIMEOUT, verify=_accept)  # stderr captured: no tty
    assert capsys.readouterr() == ("", "")


def _assert_fetch_error(info, url, path):
    message = str(info.value)
    assert url in message
    assert str(path) in message


def test_interrupted_transfer_leaves_nothing(http_server, tmp_path):
    entry = hub.CHECKPOINTS["imagenet_conv"]
    (http_server.folder / entry.filename).write_bytes(_payload())
    http_server.routes[entry.filename] = _truncated(_payload())
    with pytest.raises(hub.FetchError) as info:
        hub.fetch("imagenet_conv", progress=False, timeout=TIMEOUT)
    target = tmp_path / "cache" / entry.filename
    _assert_fetch_error(info, f"{http_server.url}/{entry.filename}", target)
    assert not target.exists()
    assert _cache_listing(tmp_path / "cache") == []  # The temp file is gone too.

    # A later, complete transfer succeeds.
    del http_server.routes[entry.filename]
    path = hub.fetch("imagenet_conv", progress=False, timeout=TIMEOUT, verify=_accept)
    assert path.read_bytes() == _payload()


def test_not_found(http_server, tmp_path):
    entry = hub.CHECKPOINTS["imagenet_fourier"]
    with pytest.raises(hub.FetchError) as info:
        hub.fetch("imagenet_fourier", progress=False, timeout=TIMEOUT)
    target = tmp_path / "cache" / entry.filename
    _assert_fetch_error(info, f"{http_server.url}/{entry.filename}", target)
    assert "404" in str(info.value)
    assert _cache_listing(tmp_path / "cache") == []


def _closed_port():
    # A port that was just free on 127.0.0.1: connecting is refused at once.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server(monkeypatch, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("PERCEIVER_BASE_URL", url)
    entry = hub.CHECKPOINTS["flow"]
    with pytest.raises(hub.FetchError) as info:
        hub.fetch("flow", cache_dir=tmp_path, progress=False, timeout=TIMEOUT)
    _assert_fetch_error(info, f"{url}/{entry.filename}", tmp_path / entry.filename)
    assert os.listdir(tmp_path) == []


def test_stalled_server_times_out(http_server, tmp_path):
    entry = hub.CHECKPOINTS["flow"]
    http_server.routes[entry.filename] = _stalled
    with pytest.raises(hub.FetchError) as info:
        hub.fetch("flow", progress=False, timeout=0.3)
    _assert_fetch_error(info, f"{http_server.url}/{entry.filename}", tmp_path / "cache" / entry.filename)
    assert _cache_listing(tmp_path / "cache") == []


def test_fetch_error_is_runtime_error():
    assert issubclass(hub.FetchError, RuntimeError)


def test_base_url_trailing_slash(http_server, monkeypatch):
    entry = hub.CHECKPOINTS["mlm"]
    (http_server.folder / entry.filename).write_bytes(b"ok")
    monkeypatch.setenv("PERCEIVER_BASE_URL", http_server.url + "/")
    assert hub.fetch("mlm", progress=False, timeout=TIMEOUT, verify=_accept).read_bytes() == b"ok"
    assert http_server.requests == [entry.filename]


def test_unknown_name(http_server):
    with pytest.raises(ValueError) as info:
        hub.fetch("imagenet", progress=False, timeout=TIMEOUT)
    for name in hub.CHECKPOINTS:
        assert name in str(info.value)
    assert http_server.requests == []


def test_existing_path_passes_through(http_server, tmp_path):
    path = tmp_path / "my_weights.pystate"
    path.write_bytes(b"local")
    assert hub.fetch(path) == path
    assert hub.fetch(str(path)) == path
    assert http_server.requests == []


def test_missing_path(http_server, tmp_path):
    with pytest.raises(FileNotFoundError):
        hub.fetch(tmp_path / "absent.pystate")
    with pytest.raises(FileNotFoundError):
        hub.fetch(str(tmp_path / "absent.pystate"))
    assert http_server.requests == []


def test_progress_uses_tqdm_when_installed(http_server, monkeypatch):
    _terminal(monkeypatch)
    calls = []

    class FakeTqdm:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))

        def update(self, n):
            calls.append(("update", n))

        def close(self):
            calls.append(("close", None))

    monkeypatch.setitem(sys.modules, "tqdm", type(sys)("tqdm"))
    sys.modules["tqdm"].tqdm = FakeTqdm
    entry = hub.CHECKPOINTS["imagenet_learned"]
    (http_server.folder / entry.filename).write_bytes(_payload())
    hub.fetch("imagenet_learned", progress=True, timeout=TIMEOUT, verify=_accept)
    (kind, kwargs), *rest = calls
    assert kind == "init" and kwargs["total"] == len(_payload()) and kwargs["file"] is sys.stderr
    assert sum(n for kind, n in rest if kind == "update") == len(_payload())
    assert rest[-1] == ("close", None)
