"""The cluster across network hops: hosts as network namespaces (tests/hosts/lab.py), set up as
docs/deployment.md says (tests/hosts/cluster.py: a TLS-only redis-server with a password on the
broker host, `agentful worker` on worker hosts, beat and the gateway on a control host).

    python bench/hosts.py [--quick] [--seconds 8]

1. Latency: calls/s and p50 of `.delay()` round trips from the client host, with 8 and 64
   callers, at 0, 2 and 20 ms round trip to the broker host, same run. The delay is a delay
   line in front of the broker (tests/hosts/delay.py): this machine's kernel has no sch_netem
   for `tc ... netem`. Every figure, 0 ms included, goes through the line.
2. Partition: a worker host's link is cut for 30 s (--quick: 15 s) under a batch of 240
   side-effecting calls, then healed; lost and duplicated are counted from the ledger.
3. Broker link flapping: down 3 s, up 2 s, down 3 s, up, under a batch; lost from the ledger.
4. Sentinel (tests/hosts/sentinel.py: the broker as three hosts r1-r3 under Sentinel, two worker
   hosts): what waiting for a replica costs a publish (`.delay()` p50 with AGENTFUL_WAIT_REPLICAS
   1 and 0, same cluster), then the primary's host killed under a batch, calls submitted across
   the kill too: the time until the Sentinels name the promoted replica, and lost from the ledger.

Last line, one JSON object: hosts, per_s_rtt0, per_s_rtt2ms, per_s_rtt20ms (64 callers),
rtt2ms_ratio, p50_ms_rtt2ms, the same at 8 callers (`*_c8`), broker_commands_per_call_* (every
process's commands to the broker while the point ran, heartbeats too, per call), partition_lost,
partition_duplicated, partition_recovery_s (the cut to the first run elsewhere of a call of the
cut host's projects), flap_lost, sentinel_failover_s, sentinel_lost, sentinel_duplicated,
sentinel_publish_ms / sentinel_publish_ms_nowait (p50 of one `.delay()` waiting for a replica, and
not). Needs root (ip netns).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.harness import analyse, read_ledger  # noqa: E402
from tests.hosts.cluster import HostCluster  # noqa: E402
from tests.hosts.lab import Lab, available  # noqa: E402

CALLERS = """
import json, sys, threading, time
from tasks import call_tool
n, seconds = int(sys.argv[1]), float(sys.argv[2])
for _ in range(3):
    call_tool.delay('ledger', 'work', {'key': 'warm', 'seconds': 0}).get(timeout=60)
lat, lock = [], threading.Lock()
stop = time.monotonic() + seconds
def caller(i):
    k = 0
    while time.monotonic() < stop:
        t = time.perf_counter()
        call_tool.delay('ledger', 'work', {'key': f'b{i}-{k}', 'seconds': 0}).get(timeout=60)
        with lock:
            lat.append(time.perf_counter() - t)
        k += 1
from tasks import app
def commands():
    return int(app.backend.client.info('stats')['total_commands_processed'])
threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
before = commands()
started = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
took = time.monotonic() - started
per_call = (commands() - before) / max(1, len(lat))
lat.sort()
print(json.dumps({'per_s': len(lat) / took, 'p50_ms': lat[len(lat) // 2] * 1000, 'calls': len(lat),
                  'broker_commands_per_call': round(per_call, 1)}))
"""


def latency(cluster: HostCluster, lab: Lab, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rtt in (0.0, 2.0, 20.0):
        cluster.set_rtt(rtt)
        for callers in (8, 64):
            got = cluster.client(CALLERS, str(callers), str(seconds), timeout_s=seconds * 4 + 120)
            tag = {0.0: "rtt0", 2.0: "rtt2ms", 20.0: "rtt20ms"}[rtt] + ("" if callers == 64 else "_c8")
            out[f"per_s_{tag}"] = round(got["per_s"], 1)
            out[f"p50_ms_{tag}"] = round(got["p50_ms"], 2)
            out[f"broker_commands_per_call_{tag}"] = got["broker_commands_per_call"]
            print(f"  rtt {rtt:g} ms, {callers} callers: {got}", file=sys.stderr)
    cluster.set_rtt(0.0)
    out["rtt2ms_ratio"] = round(out["per_s_rtt2ms"] / out["per_s_rtt0"], 3)
    out["rtt2ms_ratio_c8"] = round(out["per_s_rtt2ms_c8"] / out["per_s_rtt0_c8"], 3)
    return out


def partition(cluster: HostCluster, lab: Lab, cut_s: float) -> dict[str, Any]:
    base = len(cluster.executions())
    driver = cluster.drive(240, seconds=0.3, timeout_s=240, prefix="part", projects=20)
    assert driver.wait_submitted() and cluster.wait_executions(base + 80, timeout_s=120)
    victims = cluster.server_pids("w1")
    lab.cut("w1")
    fault_at = time.time()
    time.sleep(cut_s)
    lab.heal("w1")
    outcome = driver.result()
    ledger = [
        e for e in read_ledger(Path(str(cluster.ledger) + ".jsonl")) if str(e["key"]).startswith("part-")
    ]
    o = analyse(ledger, outcome, fault_at, victims, "worker@w1")
    print(f"  partition {cut_s:g} s: {json.dumps(o.to_json())}", file=sys.stderr)
    return {
        "partition_lost": o.lost, "partition_duplicated": o.duplicated, "partition_in_window": o.in_window,
        "partition_recovery_s": None if o.failover_s is None else round(o.failover_s, 2),
    }  # fmt: skip


def flap(cluster: HostCluster, lab: Lab) -> dict[str, Any]:
    cluster.wait_ready(cluster.names)
    base = len(cluster.executions())
    driver = cluster.drive(200, seconds=0.2, timeout_s=240, prefix="flap", projects=20)
    assert driver.wait_submitted() and cluster.wait_executions(base + 60, timeout_s=120)
    pids = {n: cluster.server_pids(n) for n in cluster.names}
    fault_at = time.time()
    lab.flap("broker", times=2, down_s=3.0, up_s=2.0)
    outcome = driver.result()
    victims, sent_before = cluster.declared_dead_pids(pids)  # their calls in flight: the window
    ledger = [
        e for e in read_ledger(Path(str(cluster.ledger) + ".jsonl")) if str(e["key"]).startswith("flap-")
    ]
    o = analyse(ledger, outcome, fault_at, victims, None, sent_before)
    print(f"  flapping: {json.dumps(o.to_json())}", file=sys.stderr)
    alive = all(cluster.alive(n) for n in [*cluster.names, "beat", "gateway"])
    return {
        "flap_lost": o.lost, "flap_duplicated": o.duplicated, "flap_everyone_alive": alive,
        "flap_recovery_s": round(o.recovery_s, 2),  # the first cut to the last call done
        "flap_in_window": o.in_window, "flap_declared_dead": len(cluster.declared_dead(cluster.names)),
    }  # fmt: skip


PUBLISH = """
import json, sys, time
from tasks import call_tool
n = int(sys.argv[1])
lat = []
for i in range(n):
    t = time.perf_counter()
    call_tool.delay('ledger', 'work', {'key': f'pub-{i}', 'seconds': 0})
    lat.append(time.perf_counter() - t)
lat.sort()
print(json.dumps({'p50_ms': lat[len(lat) // 2] * 1000}))
"""


def sentinel(tmp: Path) -> dict[str, Any]:
    replicas = ["r1", "r2", "r3"]
    with Lab(tmp, [*replicas, "ctl", "client", "w1", "w2"]) as lab:
        cluster = HostCluster(tmp, lab, ["w1", "w2"], sentinel=replicas, gateway=False).start()
        group = cluster.sentinel
        assert group is not None
        try:
            out: dict[str, Any] = {}
            for key, env in (
                ("sentinel_publish_ms", {}),
                ("sentinel_publish_ms_nowait", {"AGENTFUL_WAIT_REPLICAS": "0"}),
            ):
                program = [sys.executable, "-c", PUBLISH, "300"]
                done = lab["client"].run(program, env=cluster.env("client") | env, timeout_s=180, cwd=ROOT)
                out[key] = round(json.loads(done.stdout.strip().splitlines()[-1])["p50_ms"], 2)
            queued = cluster.drive(200, seconds=0.3, timeout_s=240, prefix="sq", projects=20)
            assert queued.wait_submitted() and cluster.wait_executions(40, timeout_s=90)
            paced = cluster.drive(150, seconds=0.1, timeout_s=240, prefix="st", projects=20, pace_s=0.05)
            time.sleep(2.0)
            pids = {n: cluster.server_pids(n) for n in cluster.names}
            fault_at = time.time()
            group.kill_host("r1")
            promoted = group.wait_whole(1, timeout_s=60)
            out["sentinel_failover_s"] = round(time.time() - fault_at, 2) if promoted else None
            outcomes = {"sq": queued.result(), "st": paced.result()}
            ledger = read_ledger(Path(str(cluster.ledger) + ".jsonl"))
            victims, sent_before = cluster.declared_dead_pids(pids)
            lost = duplicated = refused = 0
            for prefix, outcome in outcomes.items():
                mine = [e for e in ledger if str(e["key"]).startswith(f"{prefix}-")]
                o = analyse(mine, outcome, fault_at, victims, None, sent_before)
                print(f"  sentinel failover, {prefix}: {json.dumps(o.to_json())}", file=sys.stderr)
                lost, duplicated = lost + o.lost, duplicated + o.duplicated
                refused += o.states.get("REFUSED", 0)
            out |= {"sentinel_lost": lost, "sentinel_duplicated": duplicated, "sentinel_refused": refused}
            out["sentinel_recovery_s"] = round(
                max(v["t_done"] for o in outcomes.values() for v in o.values() if "t_done" in v) - fault_at, 2
            )
            return out
        finally:
            cluster.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 s per latency point, a 15 s partition")
    p.add_argument("--seconds", type=float, default=8.0, help="how long each latency point runs")
    args = p.parse_args()
    why = available()
    if why is not None:
        raise SystemExit(f"hosts as network namespaces are not possible here: {why}")
    seconds, cut_s = (4.0, 15.0) if args.quick else (args.seconds, 30.0)
    tmp = Path(tempfile.mkdtemp(prefix="agentful-hosts-"))
    names = ["broker", "ctl", "client", "w1", "w2", "w3"]
    with Lab(tmp, names) as lab:
        cluster = HostCluster(tmp, lab, ["w1", "w2", "w3"], delay_line=True).start()
        try:
            result: dict[str, Any] = {"hosts": len(names)}
            result |= latency(cluster, lab, seconds)
            result |= partition(cluster, lab, cut_s)
            result |= flap(cluster, lab)
        finally:
            cluster.stop()
    result |= sentinel(Path(tempfile.mkdtemp(prefix="agentful-sentinel-")))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
