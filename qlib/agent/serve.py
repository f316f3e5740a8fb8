"""Start/stop llama-cpp-python's OpenAI-compatible server for the embedded model, a clone, or any GGUF.

    python -m qlib.agent.serve --port 8080            # serves http://127.0.0.1:8080/v1 until Ctrl-C
    python -m qlib.agent.serve --model smollm2-135m-bc --env webshop [--clones DIR]   # the WebShop clone

``start_server(...)`` runs ``python -m llama_cpp.server`` as a subprocess, waits until ``/v1/models``
answers and returns a :class:`LlamaServer` (a context manager; ``stop()`` ends exactly that process).
The model id is the name asked for (``smollm2-135m``, ``policy.model``'s default, or ``smollm2-135m-bc``
for the behaviour-cloned agent, whose GGUF :func:`qlib.export.gguf_for` exports on first use), so the
``openai`` backend with the same ``policy.model`` talks to it; a GGUF given as a path is served as
``smollm2-135m``.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlib.provision import CLONE_NAME, EMBEDDED_NAME


class ServerError(RuntimeError):
    """The server process exited or did not answer in time (the message has its log tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class LlamaServer:
    """A running ``llama_cpp.server`` subprocess."""

    process: subprocess.Popen
    host: str
    port: int
    log_path: Path
    _log: Any = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (kill after ``timeout`` seconds) and close its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LlamaServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def server_command(model: str | Path, host: str, port: int, *, n_ctx: int = 4096, n_threads: int = 2,
                   alias: str = EMBEDDED_NAME, extra: list[str] | None = None) -> list[str]:
    """The ``python -m llama_cpp.server`` command line."""
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
        "--host", host, "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
        "--n_threads_batch", str(n_threads), *(extra or []),
    ]


def start_server(model: str | Path | None = None, *, host: str = "127.0.0.1", port: int | None = None,
                 n_ctx: int = 4096, n_threads: int = 2, timeout: float = 120.0, alias: str = EMBEDDED_NAME,
                 extra: list[str] | None = None, log_path: str | Path | None = None) -> LlamaServer:
    """Start the server (default: the embedded SmolLM2 GGUF, as model id ``alias``) and wait until
    ``/v1/models`` answers."""
    if model is None:
        from qlib.provision import gguf_path

        model = gguf_path()
    port = port or free_port(host)
    log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
    log_file = open(log_path, "w")  # noqa: SIM115 - closed by LlamaServer.stop
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    process = subprocess.Popen(
        server_command(model, host, port, n_ctx=n_ctx, n_threads=n_threads, alias=alias, extra=extra),
        stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
    )
    server = LlamaServer(process, host, port, log_path, log_file)
    try:
        wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: LlamaServer, timeout: float) -> None:
    """Poll ``GET /v1/models`` until it answers 200; raise :class:`ServerError` if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(f"llama_cpp.server exited with code {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.base_url + "/models", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise ServerError(f"llama_cpp.server did not answer on {server.base_url} within {timeout:.0f}s:\n{server.log_tail()}")


def main(argv: list[str] | None = None) -> int:
    from qlib.config import PROFILE_NAMES, load_config
    from qlib.export import gguf_for

    parser = argparse.ArgumentParser(prog="python -m qlib.agent.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMBEDDED_NAME,
                        help=f"{EMBEDDED_NAME} (the embedded SmolLM2-135M-Instruct, default), {CLONE_NAME} "
                        "(the behaviour-cloned agent of --env) or a GGUF file")
    parser.add_argument("--env", help=f"environment whose clone {CLONE_NAME} means (webshop, hotpotqa)")
    parser.add_argument("--clones", help="folder of the clones (<folder>/<env>/; default: policy.clones of --profile)")
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=None,
                        help="config profile whose policy.clones is the default --clones (default: cpu)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to answer")
    args = parser.parse_args(argv)
    overrides = {"policy.model": args.model, **({"policy.clones": args.clones} if args.clones else {})}
    try:
        model = gguf_for(load_config(args.profile, overrides).policy, args.env)
    except (OSError, ValueError, RuntimeError) as err:  # no clone / no env / bad config / converter failed
        print(f"cannot serve {args.model}: {err}", file=sys.stderr)
        return 2
    alias = args.model if args.model in (EMBEDDED_NAME, CLONE_NAME) else EMBEDDED_NAME
    server = start_server(model, host=args.host, port=args.port, n_ctx=args.n_ctx,
                          n_threads=args.n_threads, timeout=args.timeout, alias=alias)
    print(f"serving {alias} ({model}) at {server.base_url} (log: {server.log_path}); Ctrl-C to stop", flush=True)
    use_model = f" --set policy.model={alias}" if alias != EMBEDDED_NAME else ""
    print(f"use it with: --set policy.backend=openai --set policy.base_url={server.base_url}{use_model}", flush=True)
    try:
        while server.process.poll() is None:
            time.sleep(1.0)
        print(server.log_tail(), file=sys.stderr)
        return server.process.returncode or 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
