"""The cluster across real network hops: a broker host, worker hosts, a control host and a client
host, each its own network namespace (tests/hosts/lab.py), set up as docs/deployment.md says
(tests/hosts/cluster.py), TLS between them. Outcomes are counted from the ledger of executions.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tasks.registry import lease_s
from tasks.settings import Settings
from tests.chaos.harness import analyse, read_ledger, runs_of
from tests.hosts.cluster import GATEWAY_PORT, HostCluster
from tests.hosts.lab import Lab
from workers.launcher import wait_for

pytestmark = pytest.mark.hosts
HOSTS = ["broker", "ctl", "client", "w1", "w2", "w3", "w4"]
HEARTBEAT_S: float = Settings.model_fields["heartbeat_s"].default  # the hosts run with the default
SERVER_START_S = 1.0

GATEWAY_CALL = """
import json, ssl, sys
import anyio, httpx2, mcp
from mcp.client.streamable_http import streamable_http_client

async def call(url, ca):
    ctx = ssl.create_default_context(cafile=ca)
    async with httpx2.AsyncClient(verify=ctx, timeout=30) as http:
        async with mcp.Client(streamable_http_client(url, http_client=http)) as c:
            names = [t.name for t in (await c.list_tools()).tools]
            r = await c.call_tool("ledger__work", {"key": "via-gateway", "seconds": 0})
            return {"names": names, "error": r.is_error, "text": r.content[0].text, "tls": "TLSv1.3"}

out = {"ok": anyio.run(call, sys.argv[1], sys.argv[2])}
try:  # the same gateway by its address, which its certificate does not name: refused
    anyio.run(call, sys.argv[3], sys.argv[2])
    out["by_ip"] = "connected"
except Exception as exc:
    out["by_ip"] = repr(exc)
print(json.dumps(out))
"""


def test_hosts_over_tls_serve_delay_and_the_gateway_and_a_host_that_joins_gets_calls(tmp_path: Path) -> None:
    with Lab(tmp_path, HOSTS) as lab:
        cluster = HostCluster(tmp_path, lab, ["w1", "w2", "w3"]).start()
        try:
            outcome = cluster.drive(120, seconds=0.05, timeout_s=120, projects=30).result()
            assert {v["state"] for v in outcome.values()} == {"SUCCESS"}, outcome
            assert {v["worker"] for v in outcome.values()} == {"worker@w1", "worker@w2", "worker@w3"}

            ctl = lab["ctl"]
            out = cluster.client(
                GATEWAY_CALL, f"https://{ctl.fqdn}:{GATEWAY_PORT}/mcp", str(cluster.ca_file),
                f"https://{ctl.ip}:{GATEWAY_PORT}/mcp",
            )  # fmt: skip
            assert "ledger__work" in out["ok"]["names"] and not out["ok"]["error"], out
            assert "CERTIFICATE_VERIFY_FAILED" in out["by_ip"] or "certificate" in out["by_ip"].lower(), out

            # A fourth host joins, as the guide says: it takes calls as soon as its worker is up.
            cluster.start_worker("w4")
            cluster.wait_ready(["w4"])
            later = cluster.drive(60, seconds=0.05, timeout_s=120, prefix="joined", projects=60).result()
            assert {v["state"] for v in later.values()} == {"SUCCESS"}
            assert "worker@w4" in {v["worker"] for v in later.values()}

            # ... and leaves warmly, under a batch: nothing is lost, nothing runs twice.
            base = len(cluster.executions())
            driver = cluster.drive(120, seconds=0.3, timeout_s=120, prefix="leave", projects=40)
            assert driver.wait_submitted() and cluster.wait_executions(base + 40, timeout_s=60)
            assert cluster.stop_worker("w4") == 0, cluster.log("w4")[-2000:]
            left = driver.result()
            ledger = read_ledger(Path(str(cluster.ledger) + ".jsonl"))
            result = analyse([e for e in ledger if str(e["key"]).startswith("leave-")], left, 0.0)
            assert result.lost == 0 and result.duplicated == 0 and result.in_window == 0, result
        finally:
            cluster.stop()


def test_a_partitioned_worker_host_loses_nothing_and_runs_nothing_it_no_longer_owns(tmp_path: Path) -> None:
    """w1's link is cut for 30 s while it holds calls (no RST: its connections just go quiet),
    then healed. Its projects' calls run elsewhere within the heartbeat expiry and a hand-over,
    none is lost, none runs twice outside the window, and once back it is fenced: it stores and
    runs nothing it held, goes on as a new incarnation, and takes calls again."""
    with Lab(tmp_path, HOSTS[:6]) as lab:
        cluster = HostCluster(tmp_path, lab, ["w1", "w2", "w3"], gateway=False).start()
        try:
            driver = cluster.drive(240, seconds=0.3, timeout_s=180, projects=20)
            assert driver.wait_submitted() and cluster.wait_executions(80, timeout_s=90)
            victims = cluster.server_pids("w1")
            lab.cut("w1")
            fault_at = time.time()  # once the cut is in place: a call begun before it is in the window
            time.sleep(30)
            lab.heal("w1")
            outcome = driver.result()
            ledger = read_ledger(Path(str(cluster.ledger) + ".jsonl"))
            # Cut off, w1 cannot tell yet: its last beat was accepted at most one beat before the
            # cut, and it sends what it had claimed, without asking, while that lease is younger
            # than lease_s (a beat and a second, docs/reliability.md); after that it asks the
            # store, which it cannot reach, and sends nothing. So what its servers began up to
            # lease_s after the cut was sent before its lease ran out, plus the second a loaded
            # server takes to begin it.
            sent_before = fault_at + lease_s(HEARTBEAT_S) + SERVER_START_S
            o = analyse(ledger, outcome, fault_at, victims, "worker@w1", sent_before)
            assert o.accepted == 240 and o.lost == 0, (o.lost_keys, o.states)
            assert o.duplicated == 0, runs_of(ledger, o.duplicated_keys, fault_at, victims)
            assert o.failover_s is not None and o.failover_s <= 10.0, o.failover_s
            assert cluster.alive("w1"), "the partitioned worker lives through it"
            assert wait_for(lambda: "goes on as incarnation" in cluster.log("w1"), 30), cluster.log("w1")[
                -3000:
            ]
            cluster.wait_ready(["w1"])  # it takes calls again
        finally:
            cluster.stop()


def test_a_flapping_broker_link_loses_nothing_and_everyone_reconnects(tmp_path: Path) -> None:
    """The broker host's link goes down 3 s, up 2 s, down 3 s, up, under a batch: every worker,
    beat and the gateway live through it and serve again by themselves; nothing is lost, nothing
    runs twice outside the window. A worker whose beats the flap held back past the expiry (TCP
    retransmits after a 3 s outage can take seconds more) is declared dead: the calls it was
    running then are the window, as after any fault."""
    workers = ["w1", "w2", "w3"]
    with Lab(tmp_path, HOSTS[:6]) as lab:
        cluster = HostCluster(tmp_path, lab, workers).start()
        try:
            driver = cluster.drive(200, seconds=0.2, timeout_s=180, projects=20)
            assert driver.wait_submitted() and cluster.wait_executions(60, timeout_s=90)
            pids = {n: cluster.server_pids(n) for n in workers}
            fault_at = time.time()
            lab.flap("broker", times=2, down_s=3.0, up_s=2.0)
            outcome = driver.result()
            ledger = read_ledger(Path(str(cluster.ledger) + ".jsonl"))
            victims, sent_before = cluster.declared_dead_pids(pids)
            o = analyse(ledger, outcome, fault_at, victims, None, sent_before)
            assert o.accepted == 200 and o.lost == 0, (o.lost_keys, o.states)
            assert o.duplicated == 0, (
                runs_of(ledger, o.duplicated_keys, fault_at, victims),
                cluster.declared_dead(workers),
            )
            assert all(cluster.alive(n) for n in ("w1", "w2", "w3", "beat", "gateway"))
            cluster.wait_ready(["w1", "w2", "w3"])
            ctl = lab["ctl"]
            url = f"https://{ctl.fqdn}:{GATEWAY_PORT}/mcp"
            out = cluster.client(GATEWAY_CALL, url, str(cluster.ca_file), url)
            assert not out["ok"]["error"], out
        finally:
            cluster.stop()


GATEWAY_TIMED = """
import json, ssl, sys, time
import anyio, httpx2, mcp
from mcp.client.streamable_http import streamable_http_client

async def call(url, ca):
    ctx = ssl.create_default_context(cafile=ca)
    async with httpx2.AsyncClient(verify=ctx, timeout=120) as http:
        async with mcp.Client(streamable_http_client(url, http_client=http)) as c:
            r = await c.call_tool("ledger__work", {"key": "cut-off", "seconds": 0})
            return {"error": r.is_error, "text": r.content[0].text if r.content else ""}

started = time.monotonic()
try:
    out = anyio.run(call, sys.argv[1], sys.argv[2])
except Exception as exc:
    out = {"error": True, "text": "raised " + repr(exc)[:500]}
out["s"] = time.monotonic() - started
print(json.dumps(out))
"""


def test_a_gateway_cut_off_from_the_broker_answers_a_clear_error_then_serves_again(tmp_path: Path) -> None:
    with Lab(tmp_path, ["broker", "ctl", "client", "w1"]) as lab:
        cluster = HostCluster(tmp_path, lab, ["w1"], beat=False).start()
        try:
            url = f"https://{lab['ctl'].fqdn}:{GATEWAY_PORT}/mcp"
            assert not cluster.client(GATEWAY_TIMED, url, str(cluster.ca_file))["error"]
            lab.block("ctl", "broker")
            cut = cluster.client(GATEWAY_TIMED, url, str(cluster.ca_file), timeout_s=180)
            assert cut["error"] and cut["s"] <= 30.0, cut
            assert "broker" in cut["text"].lower() or "unavailable" in cut["text"].lower(), cut
            lab.unblock("ctl", "broker")
            assert wait_for(lambda: not cluster.client(GATEWAY_TIMED, url, str(cluster.ca_file))["error"], 60)
            assert cluster.alive("gateway")
        finally:
            cluster.stop()
