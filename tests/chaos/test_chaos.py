"""The chaos harness: its checker (pure), its proxy (real Redis), and a short round of real faults."""

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from checker import Fault, Tenure, check, outages
from harness import BOUND, LEASE, ChaosRun
from hostsmode import HostsChaosRun
from proxy import ProxyHub
from testkit.hosts import RigUnavailable


def tenure(node, epoch, start, end, others=()):
    return Tenure(node=node, epoch=epoch, start=start, end=end, others=others)


def fault(injected, lifted=None, kind="kill-launcher"):
    return Fault(kind=kind, target="n1", injected=injected, lifted=injected if lifted is None else lifted)


def test_checker_accepts_clean_handovers():
    report = check([tenure("a", 1, 0, 10), tenure("b", 2, 12, 20), tenure("a", 3, 21, None)],
                   [fault(9), fault(19.5)], lease=3, bound=1, until=30)
    assert report.ok, report.problems()
    assert report.takeovers == 2 and report.recoveries == [3.0, 1.5]


def test_checker_finds_an_overlap_even_by_a_millisecond():
    report = check([tenure("a", 1, 0, 10.001), tenure("b", 2, 10.0, None)], [], lease=3, bound=1, until=20)
    assert len(report.overlaps) == 1 and not report.ok


def test_checker_finds_a_head_that_outlived_the_run():
    report = check([tenure("a", 1, 0, None), tenure("b", 2, 5, None)], [], lease=3, bound=1, until=20)
    assert report.overlaps


def test_checker_finds_epochs_that_do_not_rise():
    report = check([tenure("a", 2, 0, 1), tenure("b", 2, 2, 3), tenure("c", 1, 4, None)], [], 3, 1, 10)
    assert len(report.epoch_errors) == 2


def test_checker_finds_a_head_started_beside_another_epoch():
    report = check([tenure("a", 1, 0, 1), tenure("b", 2, 2, None, others=(123,))], [], 3, 1, 10)
    assert report.started_beside_others and not report.ok


def test_checker_times_recovery_from_the_fault_lift():
    # a freeze from 10 to 14; the head died at 12.5 (watchdog), the next started at 13: 0 s after the lift
    frozen = check([tenure("a", 1, 0, 12.5), tenure("b", 2, 13, None)], [fault(10, 14, "freeze")], 3, 1, 30)
    assert frozen.recoveries == [0.0]
    # a Redis stall from 10 to 16 with the head dead at 12: a leader 5 s after the lift is too slow
    slow = check([tenure("a", 1, 0, 12), tenure("b", 2, 21, None)], [fault(10, 16, "redis-stall")], 3, 1, 30)
    assert slow.recoveries == [5.0] and slow.slow_recoveries


def test_checker_counts_an_outage_still_open_at_the_end():
    report = check([tenure("a", 1, 0, 5)], [fault(4)], lease=3, bound=1, until=20)
    assert report.recoveries == [16.0] and not report.ok


def test_checker_finds_a_head_started_while_paused_or_by_a_node_of_priority_zero():
    paused = check([tenure("a", 1, 0, 5), tenure("b", 2, 7, None)], [fault(4, 9, "pause-kill")], 3, 5, 20)
    assert len(paused.against_the_operator) == 1 and "while paused" in paused.problems()[0]
    after = check([tenure("a", 1, 0, 5), tenure("b", 2, 9.5, None)], [fault(4, 9, "pause-kill")], 3, 5, 20)
    assert after.ok, after.problems()
    zero = check([tenure("a", 1, 0, 5), tenure("c", 2, 6, None)], [], 3, 5, 20, never_lead=frozenset({"c"}))
    assert zero.problems() == ["c (epoch 2) started at 6.000, but it has priority 0"]


def test_outages_are_the_gaps_between_tenures():
    assert outages([tenure("a", 1, 0, 2), tenure("b", 2, 3, 5)], 1, 10) == [(2, 3), (5, 10)]


@pytest.fixture
def hub():
    hub = ProxyHub()
    yield hub
    hub.close()


def test_proxy_passes_drops_and_hangs(hub, redis_server):
    proxy = hub.proxy(("127.0.0.1", redis_server.port))
    client = redis.Redis(port=proxy.port, socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
    assert client.ping()
    proxy.set_mode("hang")
    with pytest.raises(redis.TimeoutError):
        client.ping()
    proxy.set_mode("drop")
    with pytest.raises(redis.ConnectionError):
        client.ping()
    proxy.set_mode("pass")
    assert client.ping()


def test_proxy_can_deliver_what_a_hang_held_back_late(hub, redis_server):
    proxy = hub.proxy(("127.0.0.1", redis_server.port))
    client = redis.Redis(port=proxy.port, socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
    assert client.ping()
    proxy.set_mode("hang")
    with pytest.raises(redis.TimeoutError):
        client.set("late", "1")
    assert redis_server.client().get("late") is None
    proxy.set_mode("pass", deliver_late=True)
    time.sleep(0.3)
    assert redis_server.client().get("late") == "1", "the held request reached Redis after the heal"


@pytest.mark.chaos
def test_short_chaos_round_holds_every_rule(tmp_path):
    """About a minute of random faults on 3 launchers of priorities 2, 1 and 0 (an operator's pause among
    the faults): no overlap, rising epochs, a leader back within lease + bound after each fault, none
    while paused nor of priority 0, nothing left running."""
    lines = []
    run = ChaosRun(tmp_path, launchers=3, seconds=45, log=lines.append)
    report = run.run()
    assert report.ok, f"seed {run.seed}: " + "; ".join(report.problems()) + "\n" + "\n".join(lines)
    assert report.faults >= 5 and report.takeovers >= 2, "the round did inject faults and move the lease"
    assert report.worst_recovery <= LEASE + BOUND


@pytest.mark.chaos
@pytest.mark.hosts
def test_short_chaos_round_on_hosts_holds_every_rule(tmp_path):
    """The same on rig hosts: each launcher on its own host, real cuts (silent drop), Redis on its own host."""
    lines = []
    run = HostsChaosRun(tmp_path, launchers=3, seconds=40, log=lines.append)
    try:
        report = run.run()
    except RigUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    assert report.ok, f"seed {run.seed}: " + "; ".join(report.problems()) + "\n" + "\n".join(lines)
    assert report.faults >= 5 and report.takeovers >= 2, "the round did inject faults and move the lease"
    assert report.worst_recovery <= LEASE + BOUND
