"""A real RabbitMQ cluster for tests: N nodes with the MQTT plugin, on loopback, in a temp dir.

``RabbitCluster`` starts every node from Debian's ``rabbitmq-server`` package (3.10) as the
current user, with nothing taken from the system's install but the code:

* one directory holds everything: each node's config, enabled-plugins file, database and logs,
  and an Erlang cookie in a ``HOME`` of its own (the nodes and ``rabbitmqctl`` read
  ``$HOME/.erlang.cookie``), so the system's cookie and ``/etc/rabbitmq`` are never read;
* a private ``epmd`` on a free port (``ERL_EPMD_PORT``), started and stopped here: parallel test
  workers and a system epmd on 4369 never see each other's nodes;
* free ports for AMQP, Erlang distribution (``RABBITMQ_DIST_PORT``) and MQTT, all on 127.0.0.1;
* node names ``v2g-a-<random>@localhost``, ``v2g-b-<random>@localhost``, ... and the second and
  later nodes joined to the first (``rabbitmqctl stop_app; join_cluster; start_app``).

MQTT clients may connect anonymously (they then act as ``username``) or log in as ``username``
with ``password``. RabbitMQ 3.10 speaks MQTT 3.1 and 3.1.1 only, and its retained-message
store is local to each node (``mqtt.retained_message_store``, a DETS file per vhost): a
retained message published through one node is not seen by a subscriber on another
(hil/test_rabbitmq_cluster.py shows both). The plugin tracks client IDs in a Raft cluster of
every node: a stopped node's MQTT can come back only while a majority of the nodes runs, so
``start_node`` after ``stop_node`` needs three nodes or more (it refuses in a cluster of two,
where the plugin would give up after 100 s).

Measured on 2 shared, busy cores: a 2-node cluster starts in 13-20 s (both nodes boot at once in
10-15 s, the join takes 2-6 s), 3 nodes in 25-30 s; a node stops in 1.1 s; a stopped node of
three starts again in 4-6 s. ``timings_s`` holds each run's figures.

Processes: each node runs in a session of its own; ``close()`` stops all nodes at once, then the
epmd, and fails if a process whose environment names the cluster's directory is left. Where PID
1 does not reap orphans (some containers), a node's port helpers stay as zombies: they hold no
port or file.

The Debian wrappers in /usr/sbin switch to the ``rabbitmq`` user and its home when run as root;
the scripts in /usr/lib/rabbitmq/bin that they call do not, so those are run here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hil.mosquitto import free_port

log = logging.getLogger(__name__)

# Debian's package puts the real scripts here; /usr/sbin holds wrappers that su to `rabbitmq`.
RABBITMQ_BIN_DIRS = (Path("/usr/lib/rabbitmq/bin"), Path("/usr/lib/rabbitmq/sbin"))
NODE_LETTERS = string.ascii_lowercase
CTL_TIMEOUT_S = 60.0


def find_rabbitmq() -> Path | None:
    """The directory holding ``rabbitmq-server`` and ``rabbitmqctl``, or None if not installed."""
    for directory in RABBITMQ_BIN_DIRS:
        if (directory / "rabbitmq-server").is_file() and (directory / "rabbitmqctl").is_file():
            return directory
    found = shutil.which("rabbitmq-server")
    if found is not None and not found.startswith("/usr/sbin/"):
        directory = Path(found).resolve().parent
        if (directory / "rabbitmqctl").is_file():
            return directory
    return None


def find_epmd() -> str | None:
    """Erlang's port mapper daemon (package erlang-base, a dependency of rabbitmq-server)."""
    return shutil.which("epmd")


def missing_reason() -> str | None:
    """Why a cluster cannot start on this machine, or None when it can."""
    if find_rabbitmq() is None:
        return "rabbitmq-server is not installed (make system-packages installs it)"
    if find_epmd() is None:
        return "epmd is not installed (package erlang-base, a dependency of rabbitmq-server)"
    return None


def _wait_port(port: int, deadline: float, alive: subprocess.Popen[bytes] | None = None) -> bool:
    """True once 127.0.0.1:port accepts a connection; False at the deadline or if ``alive``
    exits first."""
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _port_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return False
    except OSError:
        return True


@dataclass
class RabbitNode:
    """One node's name, ports and files, and its process while it runs."""

    name: str  # e.g. v2g-a-1f2e3d@localhost
    directory: Path
    amqp_port: int
    dist_port: int
    mqtt_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / f"{self.name}.log"

    @property
    def console_file(self) -> Path:
        return self.directory / "console.log"


class RabbitCluster:
    """``nodes`` RabbitMQ nodes with MQTT on 127.0.0.1, joined in one cluster; a context manager.

    ``start()`` starts them all at once, joins each to the first, and returns once every MQTT
    listener accepts connections. ``stop_node(i)`` and ``start_node(i)`` stop and start one node
    on the same ports and data (a restarted node rejoins the cluster by itself). ``close()``
    stops every node and the epmd, checks that none of their processes is left, and removes the
    directory (when the cluster made it). Times are logged and kept in ``timings_s``.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        nodes: int = 2,
        start_timeout_s: float = 90.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        if not 1 <= nodes <= len(NODE_LETTERS):
            raise ValueError(f"nodes must be between 1 and {len(NODE_LETTERS)}, not {nodes}")
        self._own_directory = directory is None
        # Short and plain: RabbitMQ refuses paths holding * ? ^ ! [ ] { }, and the temp dir
        # pytest offers can be long.
        self.directory = (
            directory if directory is not None else Path(tempfile.mkdtemp(prefix="rmq-"))
        )
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.username = "v2g"
        self.password = secrets.token_hex(8)
        self.epmd_port = free_port()
        self.timings_s: dict[str, float] = {}
        self._epmd: subprocess.Popen[bytes] | None = None
        self._closed = False
        tag = secrets.token_hex(3)
        self.nodes = [
            RabbitNode(
                name=f"v2g-{NODE_LETTERS[i]}-{tag}@localhost",
                directory=self.directory / NODE_LETTERS[i],
                amqp_port=free_port(),
                dist_port=free_port(),
                mqtt_port=free_port(),
            )
            for i in range(nodes)
        ]

    # -- public API ---------------------------------------------------------------------------

    def mqtt_port(self, index: int) -> int:
        """The MQTT port of node ``index`` (0 is the node the others joined)."""
        return self.nodes[index].mqtt_port

    def node_name(self, index: int) -> str:
        return self.nodes[index].name

    def start(self) -> float:
        """Start the epmd and every node, join them into one cluster; seconds it took."""
        reason = missing_reason()
        if reason is not None:
            raise RuntimeError(reason)
        began_s = time.monotonic()
        try:
            self._prepare()
            self._start_epmd()
            for node in self.nodes:
                self._launch(node)
            deadline = began_s + self.start_timeout_s
            for node in self.nodes:
                self._await_mqtt(node, deadline)
            booted_s = time.monotonic()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                self.ctl(node, "stop_app")
                self.ctl(node, "join_cluster", first.name)
                self.ctl(node, "start_app")
                self._await_mqtt(node, deadline)
            if len(self.nodes) > 1:
                self.ctl(first, "await_online_nodes", str(len(self.nodes)), "--timeout", "30")
        except BaseException:
            self.close()
            raise
        took_s = time.monotonic() - began_s
        self.timings_s["boot_s"] = booted_s - began_s
        self.timings_s["start_s"] = took_s
        log.info(
            "rabbitmq cluster up: %d node(s) in %.1f s (boot %.1f s, join %.1f s); mqtt ports %s",
            len(self.nodes),
            took_s,
            booted_s - began_s,
            took_s - (booted_s - began_s),
            [node.mqtt_port for node in self.nodes],
        )
        return took_s

    def stop_node(self, index: int) -> float:
        """Stop node ``index`` (SIGTERM: RabbitMQ's orderly shutdown); seconds until its process
        has exited and its MQTT port is closed."""
        node = self.nodes[index]
        began_s = time.monotonic()
        self._stop(node)
        took_s = time.monotonic() - began_s
        self.timings_s[f"stop_node_{index}_s"] = took_s
        log.info("rabbitmq node %s stopped in %.2f s", node.name, took_s)
        return took_s

    def start_node(self, index: int) -> float:
        """Start node ``index`` again on its ports and data; seconds until MQTT accepts."""
        node = self.nodes[index]
        if node.running:
            return 0.0
        others = sum(1 for other in self.nodes if other.running)
        if len(self.nodes) > 1 and 2 * others <= len(self.nodes):
            # The MQTT plugin's start asks the client-ID tracker (a Raft cluster of every node,
            # 3.10) for its members; with no majority running it has no leader to answer, and
            # the plugin gives up after 100 s.
            raise RuntimeError(
                f"cannot start {node.name} again: {others} of {len(self.nodes)} nodes run, "
                "no majority for the MQTT plugin's client-ID tracker (use 3 nodes or more)"
            )
        began_s = time.monotonic()
        self._launch(node)
        self._await_mqtt(node, began_s + self.start_timeout_s)
        took_s = time.monotonic() - began_s
        self.timings_s[f"start_node_{index}_s"] = took_s
        log.info("rabbitmq node %s started again in %.1f s", node.name, took_s)
        return took_s

    def close(self) -> None:
        """Stop every node and the epmd; fail if one of their processes is left; remove files."""
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            if node.running and node.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGTERM)  # all at once: stopping is slow
        for node in self.nodes:
            self._stop(node)
        if self._epmd is not None:
            self._epmd.terminate()
            try:
                self._epmd.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._epmd.kill()
                self._epmd.wait()
            self._epmd = None
        left = self.leftover_pids()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        if left:
            raise RuntimeError(f"rabbitmq processes outlived close() and were killed: {left}")

    def leftover_pids(self) -> list[int]:
        """Live processes started for this cluster (their environment names its directory)."""
        marker = f"RABBITMQ_MNESIA_BASE={self.directory}/".encode()
        epmd_marker = f"-port\0{self.epmd_port}\0".encode()
        found: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone, or not ours to read
            if cmdline and (marker in environ or (b"epmd" in cmdline and epmd_marker in cmdline)):
                found.append(int(entry.name))
        return found

    def ctl(self, node: RabbitNode, *args: str) -> str:
        """Run ``rabbitmqctl -n NODE ARGS``; its output, or RuntimeError with it on failure."""
        directory = find_rabbitmq()
        assert directory is not None  # start() checked
        command = [str(directory / "rabbitmqctl"), "-n", node.name, *args]
        try:
            done = subprocess.run(
                command,
                env=self._env(node),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=CTL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} ran over {CTL_TIMEOUT_S:.0f} s"
            ) from None
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {node.name} {' '.join(args)} failed ({done.returncode}): {output}"
            )
        return output

    def log_tail(self, index: int, lines: int = 20) -> str:
        node = self.nodes[index]
        parts = []
        for path in (node.console_file, node.log_file):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            parts.extend(text.strip().splitlines()[-lines:])
        return " | ".join(parts) or "(no log)"

    def __enter__(self) -> RabbitCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _prepare(self) -> None:
        home = self.directory / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper(), encoding="ascii")
            cookie.chmod(0o400)  # Erlang refuses a cookie file others can read
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            (node.directory / "rabbitmq-env.conf").write_text("", encoding="utf-8")
            (node.directory / "enabled_plugins").write_text("[rabbitmq_mqtt].\n", encoding="utf-8")
            (node.directory / "rabbitmq.conf").write_text(self._config(node), encoding="utf-8")

    def _config(self, node: RabbitNode) -> str:
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}",
            # Made on the first node's first boot; the others get it from the cluster.
            f"default_user = {self.username}",
            f"default_pass = {self.password}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{node.mqtt_port}",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            # A client without a username acts as the default user.
            "mqtt.allow_anonymous = true",
            f"mqtt.default_user = {self.username}",
            f"mqtt.default_pass = {self.password}",
            # The default, named so the fact is visible: a DETS file on each node, not shared.
            "mqtt.retained_message_store = rabbit_mqtt_retained_msg_store_dets",
            # Nagle off toward the clients, as for the mosquitto the other tests use.
            "mqtt.tcp_listen_options.nodelay = true",
        ]
        return "\n".join(lines) + "\n"

    def _env(self, node: RabbitNode) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        env.update(
            HOME=str(self.directory / "home"),  # $HOME/.erlang.cookie, for nodes and rabbitmqctl
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_MNESIA_BASE=f"{node.directory}/mnesia",
            RABBITMQ_LOG_BASE=f"{node.directory}/log",
            RABBITMQ_CONFIG_FILE=f"{node.directory}/rabbitmq",  # .conf is appended
            RABBITMQ_CONFIG_FILES=f"{node.directory}/conf.d",  # not /etc/rabbitmq/conf.d
            RABBITMQ_ADVANCED_CONFIG_FILE=f"{node.directory}/advanced.config",  # absent
            RABBITMQ_CONF_ENV_FILE=f"{node.directory}/rabbitmq-env.conf",  # empty
            RABBITMQ_ENABLED_PLUGINS_FILE=f"{node.directory}/enabled_plugins",
            # Distribution on loopback only (it would listen on every interface).
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _start_epmd(self) -> None:
        epmd = find_epmd()
        assert epmd is not None  # start() checked
        self._epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not _wait_port(self.epmd_port, time.monotonic() + 10.0, self._epmd):
            raise RuntimeError(f"epmd did not listen on port {self.epmd_port}")

    def _launch(self, node: RabbitNode) -> None:
        directory = find_rabbitmq()
        assert directory is not None  # start() checked
        with node.console_file.open("ab") as console:
            # A session of its own: the script, beam and their helpers share one process group.
            node.process = subprocess.Popen(
                [str(directory / "rabbitmq-server")],
                env=self._env(node),
                cwd=node.directory,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _await_mqtt(self, node: RabbitNode, deadline: float) -> None:
        if not _wait_port(node.mqtt_port, deadline, node.process):
            index = self.nodes.index(node)
            state = "exited" if not node.running else "is not listening"
            raise RuntimeError(
                f"rabbitmq node {node.name} {state} (MQTT port {node.mqtt_port}): "
                f"{self.log_tail(index)}"
            )

    def _stop(self, node: RabbitNode) -> None:
        process, node.process = node.process, None
        if process is None:
            return
        if process.poll() is None:
            # The start script traps SIGTERM, passes it to beam (an orderly shutdown) and waits.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("rabbitmq node %s ignored SIGTERM; killing it", node.name)
        # Whatever is left in the node's process group (beam if the script died first, its
        # port helpers) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 5.0
        while not _port_closed(node.mqtt_port) and time.monotonic() < deadline:
            time.sleep(0.05)
