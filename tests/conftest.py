"""Shared pytest set-up: slow tests run only with --runslow; the `folds` and `chosen_folds` spies;
`offline`, `run_cli`, and `http_server` (a local file server for the hub tests).

This folder is on sys.path (no __init__.py anywhere under tests/), so tests in
subfolders import the helper modules here (`import reference_fixtures`).
"""

import http.server
import os
import threading
import time

import pytest

# XLA's CPU compiler without its backend optimisations: the suite's time is
# mostly compiling small programs once, and its checks are of values, never
# of speed (tests/test_docs.py gives its examples the same flags). Set before
# any test imports jax; a subprocess a test starts inherits them unless the
# test sets XLA_FLAGS itself. Flags the caller already gave are kept.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
_given = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_given] + [f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in _given]
).strip()

HTTP_TIMEOUT = 2.0  # Seconds the server waits for itself at teardown; also its handlers' longest stall.


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def folds(monkeypatch):
    """One bool per chunked decode traced: whether it folded its output layers into the MLP."""
    from perceiver.compute import folding

    seen = []
    original = folding.folds_tail

    def spy(*args):
        result = original(*args)
        seen.append(bool(result))
        return result

    monkeypatch.setattr(folding, "folds_tail", spy)
    return seen


@pytest.fixture
def chosen_folds(monkeypatch):
    """The `folding.Fold` of every attention traced, as the seam chose it."""
    from perceiver.compute import folding

    seen = []
    original = folding.choose_fold

    def spy(*args):
        fold = original(*args)
        seen.append(fold)
        return fold

    monkeypatch.setattr(folding, "choose_fold", spy)
    return seen


@pytest.fixture
def offline(monkeypatch, tmp_path_factory):
    """An empty checkpoint cache, and any download fails at once (nothing listens on port 9)."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("PERCEIVER_CACHE", str(cache))
    monkeypatch.setenv("PERCEIVER_BASE_URL", "http://127.0.0.1:9")
    return cache


@pytest.fixture
def run_cli(capsys):
    """Runs `perceiver ARGS...` in this process: `run_cli(*args)` -> (exit status, stdout, stderr)."""
    from perceiver import cli

    def run(*args):
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


class _FileHandler(http.server.BaseHTTPRequestHandler):
    """GET /NAME: `routes[NAME](handler)` if set, else the file NAME of `folder`, else 404."""

    def do_GET(self):
        server = self.server
        name = self.path.lstrip("/")
        server.requests.append(name)
        server.request_headers.append(dict(self.headers))
        try:
            route = server.routes.get(name)
            if route is not None:
                route(self)
                return
            path = server.folder / name
            if not name or "/" in name or not path.is_file():
                self.send_error(404, "Not Found")
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except ConnectionError:  # The client hung up on a refused body: as intended.
            pass

    def log_message(self, *args):  # Keep test output clean.
        pass


def _serve(httpd, lifetime=30.0):
    # Bounded: stops after `lifetime` seconds even if a test forgets to.
    deadline = time.monotonic() + lifetime
    while not httpd.stop.is_set() and time.monotonic() < deadline:
        httpd.handle_request()  # Returns after httpd.timeout when idle.


@pytest.fixture
def http_server(monkeypatch, tmp_path, tmp_path_factory):
    """A file server on 127.0.0.1; PERCEIVER_BASE_URL points at it, PERCEIVER_CACHE at tmp_path/"cache".

    It serves the files written into `http_server.folder` (a folder outside
    tmp_path); `http_server.routes` {name: handler -> None} answers a name
    instead. `requests` (names) and `request_headers` record what came;
    `stop` is set at teardown, so a stalling route can wait on it.
    """
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
    httpd.daemon_threads = True
    httpd.timeout = 0.05
    httpd.folder = tmp_path_factory.mktemp("served")
    httpd.routes, httpd.requests, httpd.request_headers = {}, [], []
    httpd.stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(httpd,), daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    httpd.url = f"http://{host}:{port}"
    monkeypatch.setenv("PERCEIVER_BASE_URL", httpd.url)
    monkeypatch.setenv("PERCEIVER_CACHE", str(tmp_path / "cache"))
    try:
        yield httpd
    finally:
        httpd.stop.set()
        thread.join(HTTP_TIMEOUT)
        httpd.server_close()
