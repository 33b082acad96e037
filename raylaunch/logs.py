"""Log lines that always say who we are: role, epoch and leader, as text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Callable

log = logging.getLogger("ray-ha")

#: What every line carries besides the message: role, epoch and leader as the campaign sees them.
Context = Callable[[], Mapping[str, object]]

TEXT_FORMAT = ("%(asctime)s ray-ha[%(process)d] %(levelname)s "
               "[%(ha_role)s epoch=%(ha_epoch)s leader=%(ha_leader)s] %(message)s")


class ContextFilter(logging.Filter):
    """Stamps each record with the campaign's current role, epoch and leader."""

    def __init__(self, node: str, context: Context) -> None:
        super().__init__()
        self.node, self.context = node, context

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.context()
        record.ha_node = self.node
        record.ha_role = now.get("role", "starting")
        record.ha_epoch = now.get("epoch") or "-"
        record.ha_leader = now.get("leader") or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line with stable field names, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "pid": record.process, "node": getattr(record, "ha_node", ""),
            "role": getattr(record, "ha_role", ""), "epoch": getattr(record, "ha_epoch", "-"),
            "leader": getattr(record, "ha_leader", "-"), "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, sort_keys=True)


def setup_logging(log_format: str, node: str, context: Context) -> None:
    """Send ray-ha's log to stderr in `log_format` (text or json), each line with the campaign context."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter(node, context))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def report_leftovers(pids: list[int]) -> None:
    """Log the pids of a stopped tree that would not die (SIGKILL could not end them)."""
    if pids:
        log.error("processes that would not die: %s", " ".join(map(str, pids)))
