"""The chaos harness's verdict, from tenures and faults alone (pure; CLOCK_MONOTONIC seconds throughout).

A tenure is one head's life: from the moment the fake `ray` announced itself to the moment the last
process of its tree died. A fault is what the harness did, from injection to lift. The rules:
1. no two tenures overlap;
2. epochs strictly increase from tenure to tenure;
3. no head started while a process of another epoch lived (the fake `ray`'s own look at /proc);
4. after each fault, a leader is back within `lease + bound` of the fault's lift: every outage that
   begins before the next fault ends by then;
5. nothing is left running at the end (counted by the harness);
6. no head starts while an operator's pause stands (a `pause-*` fault, from injection to lift), and no
   node of priority 0 ever leads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence


@dataclass(frozen=True)
class Tenure:
    node: str
    epoch: int
    start: float
    end: Optional[float]            # None while the head still runs
    others: tuple[int, ...] = ()    # processes of other epochs alive when it started


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str
    injected: float
    lifted: float


@dataclass
class Report:
    faults: int = 0
    takeovers: int = 0
    overlaps: list[str] = field(default_factory=list)
    epoch_errors: list[str] = field(default_factory=list)
    started_beside_others: list[str] = field(default_factory=list)
    slow_recoveries: list[str] = field(default_factory=list)
    against_the_operator: list[str] = field(default_factory=list)  # started while paused, or of priority 0
    recoveries: list[float] = field(default_factory=list)   # per fault: lift -> leader back (s)
    leaked: int = 0

    @property
    def worst_recovery(self) -> float:
        return max(self.recoveries, default=0.0)

    @property
    def ok(self) -> bool:
        return not (self.overlaps or self.epoch_errors or self.started_beside_others or self.slow_recoveries
                    or self.against_the_operator or self.leaked)

    def problems(self) -> list[str]:
        return [*self.overlaps, *self.epoch_errors, *self.started_beside_others, *self.slow_recoveries,
                *self.against_the_operator, *([f"{self.leaked} process(es) left running"] if self.leaked else [])]


def check(tenures: Sequence[Tenure], faults: Sequence[Fault], lease: float, bound: float,
          until: float, never_lead: frozenset[str] = frozenset()) -> Report:
    """Judge a run whose faults ended by `until`; tenures still running are open-ended. `never_lead`:
    the nodes of priority 0."""
    ordered = sorted(tenures, key=lambda t: t.start)
    report = Report(faults=len(faults), takeovers=max(0, len(ordered) - 1))
    for before, after in zip(ordered, ordered[1:]):
        if before.end is None or before.end > after.start:
            report.overlaps.append(f"{after.node} (epoch {after.epoch}) started {after.start:.3f} while "
                                   f"{before.node} (epoch {before.epoch}) ran until {_when(before.end)}")
        if not after.epoch > before.epoch:
            report.epoch_errors.append(f"epoch went from {before.epoch} ({before.node}) to {after.epoch} "
                                       f"({after.node})")
    report.started_beside_others = [f"{t.node} (epoch {t.epoch}) started while pids {list(t.others)} of "
                                    "another epoch lived" for t in ordered if t.others]
    pauses = [f for f in faults if f.kind.startswith("pause-")]
    report.against_the_operator = [
        f"{t.node} (epoch {t.epoch}) started at {t.start:.3f}, " + (
            "but it has priority 0" if t.node in never_lead else "while paused")
        for t in ordered if t.node in never_lead or any(p.injected < t.start < p.lifted for p in pauses)]
    for i, fault in enumerate(faults):
        window_end = faults[i + 1].injected if i + 1 < len(faults) else until
        recovery = _recovery(ordered, fault, window_end)
        report.recoveries.append(recovery)
        if recovery > lease + bound:
            report.slow_recoveries.append(f"{fault.kind} on {fault.target} at {fault.injected:.3f}: no leader "
                                          f"for {recovery:.2f}s after the fault (allowed {lease + bound:.2f}s)")
    return report


def _recovery(tenures: Sequence[Tenure], fault: Fault, window_end: float) -> float:
    """How long after the fault's lift the last outage in its window ended (0 if none outlived the lift).

    An outage still open at the window's end counts up to the window's end.
    """
    ends = [end for _, end in outages(tenures, fault.injected, window_end)]
    return max([0.0] + [end - fault.lifted for end in ends])


def outages(tenures: Sequence[Tenure], since: float, until: float) -> list[tuple[float, float]]:
    """The intervals in [since, until] when no tenure ran."""
    found, cursor = [], since
    for t in sorted(tenures, key=lambda t: t.start):
        end = until if t.end is None else t.end
        if end <= cursor:
            continue
        if t.start > cursor:
            found.append((cursor, min(t.start, until)))
        cursor = max(cursor, end)
        if cursor >= until:
            break
    if cursor < until:
        found.append((cursor, until))
    return [(a, b) for a, b in found if b > a]


def _when(t: Optional[float]) -> str:
    return "now" if t is None else f"{t:.3f}"
