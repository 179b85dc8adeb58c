"""``liber serve`` under load and faults, measured with wrk; ``feast serve`` as the reference.

A private ``redis-server`` (never the machine's shared one: it is paused here) holds 10,000 users
written in the LIBER layout by bench_online's writer, in a throwaway Feast project on the
production yaml (Redis online store, PostgreSQL SQL registry). Then, each run ``--duration``
seconds of wrk (``apt-get install wrk``), 100 candidates per ``POST /score``, random users:

  liber serve --workers N at 1 / 8 / 32 / 128 connections     req/s, p50 / p99 / max, 200 / 503 / other
  liber serve --fetch feast at 8 / 32 connections             Feast's read path under the same load
  feast serve get-online-features at 8 / 32 connections       the reference (fetch only, no scoring)
  Redis paused 2 s in the middle of a run (32 connections)    answered, degraded, shed, failed
  POST /admin/reload in the middle of a run (32 connections)  answered, shed, failed

Latencies are wrk's, over every response (a shed 503 is answered at once, so it pulls p50 down).
Without ``--model`` a small model is trained and exported first the way the tests do
(tests/modelkit.py: three MovieLens users, hash encoders; M=8, D=384, L=50).

    .venv/bin/python bench/bench_serve_load.py [--model models/liber-din] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_online import free_port, make_repo, write_users  # noqa: E402

TOKEN = "bench-reload-token"
LUA = r"""
local bodies = {%s}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) s200 = 0; s503 = 0; other = 0; degraded = 0 end
function request()
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[math.random(#bodies)])
end
function response(status, headers, body)
  if status == 200 then
    s200 = s200 + 1
    if string.find(body, '"degraded":true', 1, true) then degraded = degraded + 1 end
  elseif status == 503 then s503 = s503 + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local t = {s200 = 0, s503 = 0, other = 0, degraded = 0}
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + th:get(k) end
  end
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %%d, "seconds": %%.3f, "p50_ms": %%.3f, "p99_ms": %%.3f, ' ..
    '"max_ms": %%.3f, "s200": %%d, "s503": %%d, "other": %%d, "degraded": %%d, "socket_errors": %%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, t.s200, t.s503, t.other, t.degraded,
    e.connect + e.read + e.write + e.timeout))
end
"""


def need_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not on PATH: `apt-get install -y wrk` (Debian/Ubuntu) or build it from "
                         "https://github.com/wg/wrk, then run this again")
    return path


def build_model(tmp: Path) -> Path:
    """A small model trained + exported the way the tests do (tests/modelkit.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    import conftest  # noqa: F401  (modelkit imports it: the MovieLens location)
    from modelkit import encoded_repo, export_model, movielens_users

    from liber_features.features.memory import latest_versions
    from liber_features.features.repo import LiberFeatureConfig
    from liber_features.training.samples import SampleConfig, build_training_set

    shape = LiberFeatureConfig(memory_slots=8, vector_dim=384, history_length=50)
    events, catalog = movielens_users(["1", "5", "8"])
    ledger, _repo, store = encoded_repo(tmp / "build", events, catalog, k=10, shape=shape)
    ts = build_training_set(ledger, store, SampleConfig(), shape)
    export_model(tmp / "model", ts, latest_versions(ledger))
    return tmp / "model"


def start_redis(port: int) -> subprocess.Popen:
    """The tests' private redis-server (tests/servekit.py): never the machine's shared one."""
    sys.path.insert(0, str(REPO / "tests"))
    from servekit import start_redis as start

    return start(port)


def wait_up(url: str, proc: subprocess.Popen, what: str) -> None:
    import httpx

    for _ in range(1200):
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"{what} did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")


def cpu_seconds(session: int) -> float:
    """CPU time (user + system) of every process in a session: the server under test, all its workers,
    and those of its workers that ended meanwhile (in their parent's children's time)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == session:  # fields[3] is the session id (stat field 6)
            total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total / tick


def wrk(url: str, path: str, bodies: list[str], connections: int, seconds: float, tmp: Path,
        server: subprocess.Popen | None = None) -> dict:
    """One wrk run; with ``server`` (started in its own session) also its CPU per answered request."""
    cpu0 = cpu_seconds(server.pid) if server is not None else 0.0
    script = tmp / f"wrk-{path.strip('/').replace('/', '-')}.lua"
    script.write_text(LUA % (",".join(json.dumps(b) for b in bodies), path))
    out = subprocess.run([need_wrk(), "-t", str(min(connections, 2)), "-c", str(connections),
                          "-d", f"{round(seconds)}s", "--timeout", "5s", "-s", str(script), url],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"wrk failed: {out.stderr[-2000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    r["rps"] = round(r["requests"] / r["seconds"], 1)
    if server is not None:
        r["server_cpu_us_per_request"] = round((cpu_seconds(server.pid) - cpu0) / max(r["requests"], 1) * 1e6)
    return r


def warm(url: str, path: str, bodies: list[str], tmp: Path) -> None:
    """2 s of load before measuring. feast serve's gunicorn answers /health from its first worker
    while the second is still starting (a refused connection seen 2026-12-05): retry a few times."""
    for attempt in range(5):
        try:
            wrk(url, path, bodies, 8, 2, tmp)
            return
        except SystemExit:
            if attempt == 4:
                raise
            time.sleep(2)


def liber_serve(model: Path, root: Path, port: int, workers: int, extra: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from liber_features.cli.main import main; main()", "serve", "--model", str(model),
         "--repo", str(root), "--port", str(port), "--workers", str(workers), "--no-access-log",
         *extra], env={**os.environ, "LIBER_ADMIN_TOKEN": TOKEN},  # not on the command line (ps shows it)
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def stop(proc: subprocess.Popen | None) -> None:
    """SIGINT to the server's process group (started in its own session), then SIGKILL to what is left:
    feast serve's workers outlive a parent that was killed alone."""
    if proc is None:
        return
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def later(seconds: float, fn) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="exported model dir (default: train a small one)")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", default="1,8,32,128")
    ap.add_argument("--deadline-ms", type=float, default=100.0)
    ap.add_argument("--serve-args", default="", help="more `liber serve` options, e.g. '--max-in-flight 2'")
    ap.add_argument("--sweep-only", action="store_true", help="only the liber serve sweep (no faults, no Feast)")
    ap.add_argument("--out", default="bench/results/bench_serve_load.json")
    args = ap.parse_args()
    need_wrk()

    import httpx
    import redis

    from liber_features.features.repo import apply_repo, open_store
    from liber_features.model.card import ModelCard

    tmp = Path(tempfile.mkdtemp(prefix="liber-bench-load-"))
    model = Path(args.model) if args.model else build_model(tmp)
    card = ModelCard.load(model)
    for k, v in {"LIBER_MEMORY_SLOTS": card.memory_slots, "LIBER_VECTOR_DIM": card.vector_dim,
                 "LIBER_HISTORY_LENGTH": card.history_length}.items():
        os.environ[k] = str(v)
    rport = free_port()
    rproc = start_redis(rport)
    root = tmp / "repo"
    root.mkdir()
    project, env = make_repo(root)
    os.environ.update(env)
    os.environ.update({"LIBER_REDIS_URL": f"redis://127.0.0.1:{rport}/0",
                       "LIBER_REDIS_CONNECTION": f"127.0.0.1:{rport},db=0"})
    store = open_store(root)
    apply_repo(store, root)
    store = open_store(root)
    servers: list[subprocess.Popen] = []
    results: dict = {"machine": "2-core x86_64 CPU box (python-svc), no GPU, shared with other work",
                     "model": str(model), "users": args.users, "workers": args.workers,
                     "deadline_ms": args.deadline_ms, "serve_args": args.serve_args, "duration_s": args.duration,
                     "runs": []}
    try:
        users = write_users(store, card, args.users)
        items = list(card.item_vocab)
        rng = random.Random(0)
        bodies = [json.dumps({"user_id": rng.choice(users), "item_ids": rng.sample(items, min(100, len(items)))})
                  for _ in range(300)]
        feast_bodies = [json.dumps({"feature_service": "liber_ranker_v1", "entities": {"user_id": [rng.choice(users)]}})
                        for _ in range(300)]
        deadline = ["--deadline-ms", str(args.deadline_ms), *args.serve_args.split()]

        def record(name: str, conns: int, r: dict) -> None:
            r = {"run": name, "connections": conns, **r}
            results["runs"].append(r)
            print(json.dumps(r), flush=True)

        # liber serve on the fast path: the sweep, then the two fault runs on the same server.
        port = free_port()
        servers.append(liber_serve(model, root, port, args.workers, deadline))
        url = f"http://127.0.0.1:{port}"
        wait_up(f"{url}/healthz", servers[-1], "liber serve")
        wrk(url, "/score", bodies, 8, 2, tmp)  # warm every worker
        for c in [int(x) for x in args.connections.split(",")]:
            record(f"liber serve --workers {args.workers}", c,
                   wrk(url, "/score", bodies, c, args.duration, tmp, servers[-1]))
        if args.sweep_only:
            return finish(results, args.out)
        later(args.duration * 0.4, lambda: os.kill(rproc.pid, signal.SIGSTOP))
        later(args.duration * 0.4 + 2, lambda: os.kill(rproc.pid, signal.SIGCONT))
        record("Redis paused 2 s mid-run", 32, wrk(url, "/score", bodies, 32, args.duration, tmp, servers[-1]))
        reload: dict = {}
        later(args.duration * 0.5, lambda: reload.update(r=httpx.post(
            f"{url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)))
        r = wrk(url, "/score", bodies, 32, args.duration, tmp, servers[-1])
        time.sleep(0.5)
        r["reload_status"] = reload["r"].status_code if "r" in reload else None
        record("POST /admin/reload mid-run", 32, r)
        stop(servers.pop())

        # liber serve on Feast's read path.
        port = free_port()
        servers.append(liber_serve(model, root, port, args.workers, [*deadline, "--fetch", "feast"]))
        url = f"http://127.0.0.1:{port}"
        wait_up(f"{url}/healthz", servers[-1], "liber serve --fetch feast")
        wrk(url, "/score", bodies, 8, 2, tmp)
        for c in (8, 32):
            record(f"liber serve --workers {args.workers} --fetch feast", c,
                   wrk(url, "/score", bodies, c, args.duration, tmp, servers[-1]))
        stop(servers.pop())

        # The reference: Feast's own server, fetch only.
        port = free_port()
        servers.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "feast"), "-c", str(root), "serve", "-p", str(port),
             "--no-access-log", "-w", str(args.workers)], env={**os.environ},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True))
        url = f"http://127.0.0.1:{port}"
        wait_up(f"{url}/health", servers[-1], "feast serve")
        warm(url, "/get-online-features", feast_bodies, tmp)
        for c in (8, 32):
            record(f"feast serve -w {args.workers} get-online-features", c,
                   wrk(url, "/get-online-features", feast_bodies, c, args.duration, tmp, servers[-1]))
    finally:
        for s in servers:
            stop(s)
        if rproc.poll() is None:
            os.kill(rproc.pid, signal.SIGCONT)
            rproc.kill()
        try:
            store.registry.delete_project(project)
        except Exception as exc:  # best effort: a throwaway project in the shared registry
            print(f"could not delete project {project}: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        _ = redis  # the private server held the data: nothing to delete on the shared one
    finish(results, args.out)


def finish(results: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = ["| run | connections | req/s | p50 ms | p99 ms | max ms | 200 | degraded | 503 | failed "
             "| server CPU µs / request |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["runs"]:
        lines.append(f"| {r['run']} | {r['connections']} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                     f"| {r['max_ms']:.1f} | {r['s200']} | {r['degraded']} | {r['s503']} "
                     f"| {r['other'] + r['socket_errors']} | {r.get('server_cpu_us_per_request', '—')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
