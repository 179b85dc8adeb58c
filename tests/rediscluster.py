"""A throwaway 3-master Redis Cluster on free local ports, started and stopped by the test.

Three ``redis-server --cluster-enabled yes`` processes in a temp dir (no persistence), joined by
``redis-cli --cluster create … --cluster-replicas 0 --cluster-yes``; ready once every node reports
``cluster_state:ok``. The servers are children of the test process and are terminated by their
pid on exit, whatever the test did.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Cluster:
    ports: tuple[int, ...]

    @property
    def connection(self) -> str:
        """Feast's cluster form: ``host1:port1,host2:port2,...``."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])


def _free_ports(n: int) -> list[int]:
    """n ports the kernel hands out now; also keeps port+10000 (the cluster bus) in range."""
    ports: list[int] = []
    with contextlib.ExitStack() as stack:
        while len(ports) < n:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port + 10000 < 65536:  # the bus port must exist too
                ports.append(port)
    return ports


def _wait(what: str, ready, deadline: float) -> None:
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"Redis Cluster: {what} within {STARTUP_TIMEOUT_S} s")
        time.sleep(0.1)


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.ConnectionError:
        return False


def _state_ok(port: int) -> bool:
    return redis.Redis(port=port).cluster("info").get("cluster_state") == "ok"


@contextlib.contextmanager
def redis_cluster(workdir: Path, masters: int = 3) -> Iterator[Cluster]:
    """Start ``masters`` cluster nodes under ``workdir``, create the cluster, yield it, stop it."""
    ports = _free_ports(masters)
    procs: list[subprocess.Popen] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        for p in ports:
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(workdir / f"nodes-{p}.conf"), "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in ports:
            _wait(f"node {p} did not answer", lambda p=p: _answers(p), deadline)
        create = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=False, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S)
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout}{create.stderr}")
        for p in ports:
            _wait(f"node {p} did not reach cluster_state:ok", lambda p=p: _state_ok(p), deadline)
        yield Cluster(tuple(ports))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
