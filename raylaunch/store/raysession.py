"""Ray's own record of the cluster's session name in the GCS's Redis, read so a new head need not.

Ray's GCS keeps its key-value table in one hash per storage namespace, `RAY<namespace>@KV`, with
fields `@namespace_<kv namespace>:<key>`; the session name sits under the `session` namespace. A
head reads it at start to resume the cluster's session (Node.check_persisted_session_name), through
a C++ call that always takes a second. ray-ha reads the same field with its own client instead.
"""

from __future__ import annotations

from typing import Optional, cast

from raylaunch.store.keyspace import Keyspace

SESSION_FIELD = "@namespace_session:session_name"


def kv_table(namespace: str) -> str:
    """The hash that holds the GCS's key-value table for one storage namespace."""
    return f"RAY{namespace}@KV"


def read_session_name(keyspace: Keyspace, namespace: str) -> Optional[str]:
    """The cluster's session name as its GCS stored it, or None for a cluster never started."""
    value = keyspace.guard(lambda: cast(Optional[str], keyspace.client.hget(kv_table(namespace), SESSION_FIELD)))
    return value or None
