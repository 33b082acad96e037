"""Redis's answers judged once for everyone: transient (RedisUnavailable: try again) or permanent
(RedisRefused: a refusal that lasts until someone changes a setting, with what to do). Both are the
neutral outcomes of raylaunch.outage, which is all the decision loops catch."""

from __future__ import annotations

import re
from typing import Callable, TypeVar

import redis

from raylaunch.outage import Refused, Unavailable

T = TypeVar("T")


class RedisUnavailable(Unavailable):
    """Transient: Redis could not be reached, did not answer within the Redis timeout, or is busy
    (loading, failing over, out of memory); trying again may succeed."""


class ReplicasBehind(RedisUnavailable):
    """Redis took a lease write, but fewer replicas than required confirmed it in time."""


class RedisRefused(Refused):
    """Permanent: Redis answered and refuses, and goes on refusing until someone changes a setting.

    `cause` names which refusal (credentials, permission, wrong-type, crossslot, readonly, moved, no-lua,
    unknown-command, old-layout, other); the message says what to do. At start this is a
    configuration error (exit 2); while running a leader counts it as a failed renewal, and a standby
    or follower reports itself stuck on it.
    """


#: Refusals by the start of Redis's error reply: (cause, what it means and what to do). {key} is the
#: lease key.
REFUSALS: dict[str, tuple[str, str]] = {
    "NOAUTH": ("credentials", "Redis wants a password: set --redis-password or RAY_REDIS_PASSWORD"),
    "WRONGPASS": ("credentials", "Redis refused the credentials: check --redis-password / "
                                 "RAY_REDIS_PASSWORD and --redis-username"),
    "NOPERM": ("permission", "the Redis user may not run what ray-ha needs: give it the keys and channel "
                             "of {key} and the commands it runs on them (the advised ACL: "
                             "docs/redis-acl.md in ray-ha's source)"),
    "WRONGTYPE": ("wrong-type", "a key of lease {key} holds a value of the wrong type: delete it or "
                                "choose another --ha-key"),
    "CROSSSLOT": ("crossslot", "Redis refused keys in different hash slots; every key of ray-ha's "
                               "shares the hash tag of {key}, so something between ray-ha and Redis "
                               "(a proxy?) changes them"),
    "READONLY": ("readonly", "RAY_REDIS_ADDRESS reaches a read-only replica: point it at the master "
                             "(or at a Sentinel that watches it)"),
    "MOVED": ("moved", "RAY_REDIS_ADDRESS is a Redis Cluster node, but ray-ha could not tell (is INFO "
                       "denied to its user?): allow INFO"),
    "NOSCRIPT": ("no-lua", "Redis does not run Lua scripts, which ray-ha needs: enable EVAL, EVALSHA "
                           "and SCRIPT"),
}
#: Error replies that pass by themselves: Redis starting, busy, failing over, short of memory or disk.
PASSING = ("LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "OOM", "MISCONF", "NOREPLICAS", "ASK")
#: redis-py strips the error code off the reply and names it by class instead (which classes exist
#: depends on the release); the code is put back before the reply is judged.
CODE_CLASSES = (("ReadOnlyError", "READONLY"), ("NoPermissionError", "NOPERM"), ("NoScriptError", "NOSCRIPT"),
                ("ClusterCrossSlotError", "CROSSSLOT"), ("MovedError", "MOVED"), ("AskError", "ASK"),
                ("TryAgainError", "TRYAGAIN"), ("ClusterDownError", "CLUSTERDOWN"),
                ("MasterDownError", "MASTERDOWN"), ("OutOfMemoryError", "OOM"))


def guarded(call: Callable[[], T], key: str) -> T:
    """Run one Redis exchange, turning redis-py's errors into RedisUnavailable (transient) or
    RedisRefused (permanent, with what to do)."""
    try:
        return call()
    except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
        raise RedisRefused(f"{REFUSALS['WRONGPASS'][1]} ({exc})", "credentials") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(f"Redis did not answer: {exc}") from None
    except redis.ResponseError as exc:
        raise refusal(error_reply(exc), key) from None
    except redis.exceptions.RedisClusterException as exc:
        if "same key slot" in str(exc) or "CROSSSLOT" in str(exc):
            raise refusal(f"CROSSSLOT {exc}", key) from None
        raise RedisUnavailable(f"Redis Cluster: {exc}") from None


#: How Redis 6.2 wraps an error raised inside a script: taken off, so the reply reads as the error itself.
_SCRIPT_WRAPPER = re.compile(r"^(?:ERR )?Error running script \(call to f_\w+\): (?:@user_script: ?\d+: )*-?")


def error_reply(exc: Exception) -> str:
    """Redis's error reply as Redis sent it, its code first (redis-py may have taken it off), and
    unwrapped from Redis 6.2's script error."""
    text = str(exc).strip()
    code = getattr(exc, "status_code", None) or next(
        (code for name, code in CODE_CLASSES if isinstance(exc, getattr(redis.exceptions, name, ()))), None)
    return _SCRIPT_WRAPPER.sub("", f"{code} {text}" if code and not text.startswith(code) else text)


def _has_code(reply: str, code: str) -> bool:
    """True if `reply` is, or wraps, an error with this code (Redis 6.2 wraps a script's errors in ERR:
    `ERR Error running script ...: @user_script:21: WRONGTYPE ...` or `...: -READONLY ...`)."""
    return re.search(rf"(?:^|[\s:-]){code}(?:\s|$)", reply) is not None


def refusal(reply: str, key: str) -> Exception:
    """The exception for one error reply of Redis: RedisRefused if it will not pass by itself."""
    if any(_has_code(reply, code) for code in PASSING):
        return RedisUnavailable(f"Redis is busy or failing over: {reply}")
    reply = reply.split(", with args beginning with")[0]  # Redis quotes a script's text there
    lowered = reply.lower()
    prefix = next((code for code in REFUSALS if _has_code(reply, code)), "")
    if not prefix and "unknown command" in lowered:
        if not any(f"{q}{name}{q}" in lowered for name in ("eval", "evalsha", "script") for q in "'`"):
            return RedisRefused(f"Redis does not know a command ray-ha needs ({reply})", "unknown-command")
        prefix = "NOSCRIPT"
    if not prefix and ("AUTH" in reply or "invalid username-password" in lowered or "invalid password" in lowered):
        prefix = "WRONGPASS"
    if prefix:
        cause, advice = REFUSALS[prefix]
        return RedisRefused(f"{advice.format(key=key)} ({reply})", cause)
    return RedisRefused(f"Redis refused: {reply}")
