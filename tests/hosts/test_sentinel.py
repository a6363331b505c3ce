"""No single broker host: the broker as three Redis hosts under Sentinel (tests/hosts/sentinel.py),
and the primary's host killed mid-batch. Workers, beat, the gateway and producers follow the
promoted replica by themselves; every call `.delay()` returned for runs, and none runs twice
outside the window. Counted from the ledger of real executions.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaos.harness import analyse, read_ledger, runs_of
from tests.hosts.cluster import GATEWAY_PORT, HostCluster
from tests.hosts.lab import Lab
from tests.hosts.test_hosts import GATEWAY_CALL

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(600)]
REPLICAS = ["r1", "r2", "r3"]
HOSTS = [*REPLICAS, "ctl", "client", "w1", "w2"]
WORKERS = ["w1", "w2"]

# A user's program on the client host: one call while no replica can confirm it.
UNREPLICATED = """
import json
from tasks import call_tool
from tasks.errors import NotReplicatedError
try:
    call_tool.delay("ledger", "record", {"key": "unreplicated", "seconds": 0}, idempotency_key="unreplicated")
    print(json.dumps({"raised": None}))
except NotReplicatedError as exc:
    print(json.dumps({"raised": "NotReplicatedError", "message": str(exc)}))
"""
RESUBMIT = """
import json
from tasks import call_tool
r = call_tool.delay("ledger", "record", {"key": "unreplicated", "seconds": 0}, idempotency_key="unreplicated")
print(json.dumps({"state": "SUCCESS" if r.get(timeout=60) else "?"}))
"""


def test_the_primary_broker_host_dies_mid_batch_and_everyone_follows_the_promoted_replica(
    tmp_path: Path,
) -> None:
    with Lab(tmp_path, HOSTS) as lab:
        cluster = HostCluster(tmp_path, lab, WORKERS, sentinel=REPLICAS).start()
        group = cluster.sentinel
        assert group is not None
        try:
            # A backlog queued before the fault, and calls submitted across it.
            queued = cluster.drive(200, seconds=0.3, timeout_s=240, prefix="q", projects=20)
            assert queued.wait_submitted() and cluster.wait_executions(40, timeout_s=90)
            paced = cluster.drive(150, seconds=0.1, timeout_s=240, prefix="t", projects=20, pace_s=0.05)
            time.sleep(2.0)
            pids = {n: cluster.server_pids(n) for n in WORKERS}
            fault_at = time.time()
            group.kill_host("r1")
            promoted = group.wait_whole(1, timeout_s=60)
            failover_s = time.time() - fault_at
            assert promoted in ("r2", "r3"), group.log("r2")[-2000:]

            ledger_path = Path(str(cluster.ledger) + ".jsonl")
            outcomes = {"q": queued.result(), "t": paced.result()}
            ledger = read_ledger(ledger_path)
            victims, sent_before = cluster.declared_dead_pids(pids)
            for prefix, outcome in outcomes.items():
                mine = [e for e in ledger if str(e["key"]).startswith(f"{prefix}-")]
                o = analyse(mine, outcome, fault_at, victims, None, sent_before)
                assert o.lost == 0, (prefix, o.lost_keys[:20], o.states, failover_s)
                assert o.duplicated == 0, (prefix, runs_of(mine, o.duplicated_keys, fault_at, victims))
            assert outcomes["q"]["q-0"]["state"] == "SUCCESS"
            accepted_after = [k for k, v in outcomes["t"].items() if v["state"] == "SUCCESS"]
            assert len(accepted_after) >= 100, outcomes["t"]  # the producer followed the failover

            assert all(cluster.alive(n) for n in [*WORKERS, "beat", "gateway"])
            cluster.wait_ready(WORKERS)
            url = f"https://{lab['ctl'].fqdn}:{GATEWAY_PORT}/mcp"
            out = cluster.client(GATEWAY_CALL, url, str(cluster.ca_file), url)
            assert not out["ok"]["error"], out

            # No replica can confirm a publish: `.delay()` says so instead of returning.
            replica = next(h for h in REPLICAS[1:] if h != promoted)
            group.pause([replica])
            try:
                refused = cluster.client(UNREPLICATED)
            finally:
                group.resume([replica])
            assert refused["raised"] == "NotReplicatedError", refused
            assert "idempotency key" in refused["message"] and "replica" in refused["message"], refused
            assert group.wait_whole(1, timeout_s=60) == promoted
            assert cluster.client(RESUBMIT)["state"] == "SUCCESS"
            runs = [e for e in read_ledger(ledger_path) if e["key"] == "unreplicated" and e["ev"] == "start"]
            assert len(runs) == 1, runs
        finally:
            cluster.stop()
