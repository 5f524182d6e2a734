"""The Redis Streams job protocol shared by the queue's client and its workers.

Why Redis Streams: consumer groups give at-least-once delivery to many GPU workers on many
hosts, a pending list that survives a worker's death (another worker claims the job once its
visibility timeout passes without a heartbeat) and no scheduler of our own. At-least-once
becomes "stored exactly once" because the result key is written with SET NX: a job finished
twice (a worker presumed dead that was only slow) keeps the first result and counts the second
as a duplicate.

Cost: every state change is one Lua script, so one round trip, atomic, and safe to retry after
a lost reply (each carries a token it recognises). A job costs the client one script call and
one blocking read; the worker one blocking read, one claim script and one settle script that
stores the result, emits the events, clears the in-flight marker and acknowledges the message.

Everything both sides must agree on lives here: the key layout, the Lua scripts, the
connection factories (whose socket timeouts outlast their blocking reads, so an idle wait is
never mistaken for a lost link) and the outage bookkeeping both sides share.

Keys (P = QueueSettings.key_prefix):
  <stream>                   job messages {job_id, key, request, submitted_at, reply}
  <dead_letter_stream>       jobs that failed for good, with their error and attempts
  P:result:<key>             GenerationResult JSON, TTL result_ttl_s (key = idempotency key)
  P:inflight:<key>           job_id of the job making <key> now (duplicates attach to it)
  P:job:<job_id>             hash: state (queued/running/done/dead/cancelled), attempts (runs
                             started), failures (runs that raised), deaths (runs lost with their
                             worker), worker, run (claim token), visibility_ms, error, ...
  P:events:<job_id>          stream of {type: progress|retry|done|failed|cancelled}
  P:reply:<client>           the same events for every job one client submitted (+ job_id), so
                             a client follows all its jobs with one blocking read
  P:cancel:<job_id>          set by cancel(); a running worker stops at the next step
  P:workers                  zset consumer -> last heartbeat (for "is anyone listening?")
  P:stats                    hash of counters: submitted, completed, duplicates, retries, ...
Messages and results carry artifact hashes only; bytes live in the shared ArtifactStore.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from generators.base import GeneratorError
from generators.settings import QueueSettings

log = logging.getLogger(__name__)

EVENTS_TTL_S = 24 * 3600
REPLY_TTL_S = 24 * 3600
EVENTS_MAXLEN = 1000
WORKER_ALIVE_S = 30.0
MAX_VISIBILITY_S = 3600.0
SAFETY_CHECK_S = 10.0
"""A waiting client re-reads its job's state this often even when no event comes (events
expire, a restart can happen between two reads): nothing waits out the job timeout unseen."""

EVENT_BLOCK_MS = 5000
"""How long the client's event read blocks when no event comes (then it simply reads again)."""

READ_MARGIN_S = 5.0
"""A blocking read's socket timeout is its block time plus this: the server answers an idle
read (nil) at the end of the block, so only a link that is really gone times out."""

COMMAND_TIMEOUT_S = 5.0
"""Socket timeout of ordinary (non-blocking) commands: redis-py's default."""

LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors of the link to Redis (down, restarting, loading its AOF), not of a command."""


def read_timeout_s(block_ms: int) -> float:
    """The socket timeout for a connection that blocks up to `block_ms` in one read.

    Why: redis-py's default socket timeout (5 s) is shorter than a 5 s XREAD block, so an idle
    read used to end in TimeoutError and every quiet wait looked like an outage (issue 21.1).
    """
    return max(COMMAND_TIMEOUT_S, block_ms / 1000 + READ_MARGIN_S)


@dataclass(frozen=True)
class QueueKeys:
    prefix: str
    stream: str
    group: str
    dead: str

    @classmethod
    def from_settings(cls, s: QueueSettings) -> QueueKeys:
        return cls(s.key_prefix, s.stream, s.group, s.dead_letter_stream)

    def result(self, key: str) -> str:
        return f"{self.prefix}:result:{key}"

    def inflight(self, key: str) -> str:
        return f"{self.prefix}:inflight:{key}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def reply(self, client_id: str) -> str:
        return f"{self.prefix}:reply:{client_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"


# -- client scripts ------------------------------------------------------------------------

# Submit: return a stored result, or join the identical job in flight, or enqueue a new one (and
# re-create stream and group if Redis lost them). A retried call finds its own job id and stops.
SUBMIT = """
local raw = redis.call('GET', KEYS[1])
if raw then return {'result', raw} end
local cur = redis.call('GET', KEYS[2])
if cur then
  if cur == ARGV[1] then return {'queued', cur} end
  return {'attached', cur}
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[6])
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[4], ARGV[9], '0', 'MKSTREAM')
end
redis.call('HSET', KEYS[3], 'state', 'queued', 'key', ARGV[2], 'attempts', 0,
  'submitted_at', ARGV[3], 'reply', ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'job_id', ARGV[1], 'key', ARGV[2],
  'submitted_at', ARGV[3], 'reply', ARGV[5], 'request', ARGV[4])
redis.call('HINCRBY', KEYS[5], 'submitted', 1)
return {'queued', ARGV[1]}
"""

# Client cancel: a queued job is cancelled on the spot; a running one is flagged for its worker.
CANCEL = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'unknown' end
if st == 'done' or st == 'dead' or st == 'cancelled' then return st end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', 'cancelled while queued')
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 1000, '*', 'type', 'cancelled',
    'error', 'cancelled while queued')
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  if KEYS[6] then
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', 1000, '*', 'job_id', ARGV[3], 'type', 'cancelled',
      'error', 'cancelled while queued')
    redis.call('EXPIRE', KEYS[6], ARGV[2])
  end
  if redis.call('GET', KEYS[4]) == ARGV[3] then redis.call('DEL', KEYS[4]) end
  redis.call('HINCRBY', KEYS[5], 'cancelled', 1)
  return 'cancelled'
end
return 'cancelling'
"""


# -- worker scripts ------------------------------------------------------------------------

# Claim every message of one read. Per job: 2 keys (job hash, result) and 2 args (batch size,
# visibility ms). Returns per job {code, attempts, deaths, solo}: code 1 run it, -1 cancelled,
# -2 result already stored, -3 already dead-lettered, -4 too many worker deaths. A run left
# 'running' means its worker died: charged as a death if it ran alone, else the job is split
# off (solo) and not charged. The token makes a retried call (lost reply) change nothing.
CLAIM = """
local out = {}
for i = 1, #KEYS / 2 do
  local job, res = KEYS[2 * i - 1], KEYS[2 * i]
  local token = ARGV[4] .. ':' .. i
  local code, attempts, deaths, solo = 1, 0, 0, 0
  local h = redis.call('HMGET', job, 'state', 'run', 'batch', 'deaths', 'solo', 'attempts')
  if redis.call('EXISTS', res) == 1 then
    code = -2
  elseif h[1] == 'cancelled' then
    code = -1
  elseif h[1] == 'dead' then
    code = -3
  elseif h[2] == token then
    attempts, deaths, solo = tonumber(h[6] or 0), tonumber(h[4] or 0), tonumber(h[5] or 0)
  else
    deaths, solo = tonumber(h[4] or 0), tonumber(h[5] or 0)
    if h[1] == 'running' then
      if tonumber(h[3] or 1) > 1 then
        solo = 1
        redis.call('HSET', job, 'solo', 1)
        redis.call('HINCRBY', job, 'splits', 1)
      else
        deaths = redis.call('HINCRBY', job, 'deaths', 1)
      end
    end
    if deaths >= tonumber(ARGV[5]) then
      code = -4
    else
      attempts = redis.call('HINCRBY', job, 'attempts', 1)
      local batch = ARGV[4 + 2 * i]
      if solo == 1 then batch = 1 end
      redis.call('HSET', job, 'state', 'running', 'worker', ARGV[1], 'started_at', ARGV[2],
        'run', token, 'batch', batch, 'visibility_ms', ARGV[5 + 2 * i])
      redis.call('EXPIRE', job, ARGV[3])
    end
  end
  out[i] = {code, attempts, deaths, solo}
end
return out
"""

_EVENT_FN = """
local function event(...)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 1000, '*', ...)
  redis.call('EXPIRE', KEYS[2], ARGV[7])
  if KEYS[7] then
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', 1000, '*', 'job_id', ARGV[3], ...)
    redis.call('EXPIRE', KEYS[7], ARGV[7])
  end
end
"""

# Settle a run that ended: 'done' stores the result (SET NX: a second finisher only counts a
# duplicate), 'ack' finishes a job whose result was already stored, 'cancelled' records a
# cancel. Progress events not sent yet go first, so the client sees them in order.
# KEYS: job, events, inflight, stats, stream, result[, reply]
# ARGV: mode, token, job_id, group, msg_id, now, events_ttl, result_ttl, raw, sha, error,
#       n_progress, step, total, ...
SETTLE = (
    _EVENT_FN
    + """
local mode = ARGV[1]
local run = redis.call('HGET', KEYS[1], 'run')
if mode ~= 'ack' and run == ARGV[2] .. ':settled' then return 'again' end
if mode == 'cancelled' and run ~= ARGV[2] then return 'stale' end
if mode == 'ack' and redis.call('HGET', KEYS[1], 'state') == 'done' then
  redis.pcall('XACK', KEYS[5], ARGV[4], ARGV[5])
  return 'again'
end
for i = 0, tonumber(ARGV[12]) - 1 do
  event('type', 'progress', 'step', ARGV[13 + 2 * i], 'total', ARGV[14 + 2 * i])
end
local first = 'first'
local raw, sha = ARGV[9], ARGV[10]
if mode == 'done' then
  if redis.call('SET', KEYS[6], raw, 'NX', 'EX', ARGV[8]) then
    redis.call('HINCRBY', KEYS[4], 'completed', 1)
  else
    redis.call('HINCRBY', KEYS[4], 'duplicates', 1)
    if run ~= ARGV[2] then return 'duplicate' end
    first = 'duplicate'
    raw = redis.call('GET', KEYS[6]) or raw
  end
elseif mode == 'ack' then
  raw = redis.call('GET', KEYS[6]) or raw
  local ok, obj = pcall(cjson.decode, raw)
  if ok and type(obj) == 'table' and type(obj.image) == 'table' then sha = obj.image.sha256 end
end
if mode == 'cancelled' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', ARGV[11], 'finished_at', ARGV[6],
    'run', ARGV[2] .. ':settled')
  event('type', 'cancelled', 'error', ARGV[11])
  redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
else
  redis.call('HSET', KEYS[1], 'state', 'done', 'finished_at', ARGV[6], 'sha256', sha,
    'run', ARGV[2] .. ':settled')
  event('type', 'done', 'result', raw, 'sha256', sha)
end
if redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
redis.pcall('XACK', KEYS[5], ARGV[4], ARGV[5])
return first
"""
)

# A run that raised: re-queue (a fresh message, this one acknowledged) while the error budget
# lasts and the error is retryable, else dead-letter. Token '' = no run to own (the claim
# refused the job). KEYS: job, events, inflight, stats, stream, dead[, reply]
# ARGV: job_id(3), group(4), msg_id(5), now(6), events_ttl(7), error(8), retryable(9),
#       max_attempts(10), maxlen(11), token(1), n_requeue(12), requeue..., dead...
FAIL = (
    _EVENT_FN
    + """
local run = redis.call('HMGET', KEYS[1], 'run', 'state')
if ARGV[1] ~= '' and run[1] ~= ARGV[1] then return 'stale' end
if ARGV[1] == '' and run[2] == 'dead' then return 'again' end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local attempts = redis.call('HGET', KEYS[1], 'attempts') or '0'
local n = tonumber(ARGV[12])
local requeue, dead = {}, {}
for i = 13, 12 + n do requeue[#requeue + 1] = ARGV[i] end
for i = 13 + n, #ARGV do dead[#dead + 1] = ARGV[i] end
local settled = ARGV[1] .. ':settled'
if ARGV[9] == '1' and failures < tonumber(ARGV[10]) then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[11], '*', unpack(requeue))
  redis.call('HSET', KEYS[1], 'state', 'queued', 'error', ARGV[8], 'run', settled)
  event('type', 'retry', 'error', ARGV[8], 'attempt', attempts)
  redis.call('HINCRBY', KEYS[4], 'retries', 1)
  redis.pcall('XACK', KEYS[5], ARGV[4], ARGV[5])
  return 'retry'
end
dead[#dead + 1] = 'attempts'
dead[#dead + 1] = attempts
redis.call('XADD', KEYS[6], '*', unpack(dead))
redis.call('HSET', KEYS[1], 'state', 'dead', 'error', ARGV[8], 'finished_at', ARGV[6],
  'run', settled)
event('type', 'failed', 'error', ARGV[8], 'attempts', attempts, 'retryable', ARGV[9])
if redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
redis.call('HINCRBY', KEYS[4], 'dead', 1)
redis.pcall('XACK', KEYS[5], ARGV[4], ARGV[5])
return 'dead'
"""
)

# Shutdown: hand the job back at once; this run does not count.
# KEYS: job, stream, stats  ARGV: token, group, msg_id, maxlen, fields...
RELEASE = """
if redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] then return 'stale' end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
redis.pcall('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'state', 'queued', 'run', ARGV[1] .. ':settled')
redis.call('HINCRBY', KEYS[3], 'released', 1)
return 'released'
"""

# Heartbeat: announce liveness and renew the visibility of the runs we still own (resetting
# their idle time); runs another worker took over are returned so we stop them.
# KEYS: workers, stream, job...  ARGV: now, consumer, group, (token, msg_id)...
HEARTBEAT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local lost = {}
for i = 3, #KEYS do
  local token, msg = ARGV[2 * i - 2], ARGV[2 * i - 1]
  if redis.call('HGET', KEYS[i], 'run') == token then
    redis.pcall('XCLAIM', KEYS[2], ARGV[3], ARGV[2], 0, msg, 'JUSTID')
  else
    lost[#lost + 1] = msg
  end
end
return lost
"""

# -- connections ---------------------------------------------------------------------------

T = TypeVar("T")


async def cancellable(aw: Awaitable[T]) -> T:
    """Await a redis call so that cancelling the caller always works.

    redis-py 8 can lose a cancellation that lands while a command is in flight (the command
    returns normally and the task runs on). Running the call in its own task makes our await
    the one that is cancelled; the orphaned call ends by itself within its block timeout.
    """
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_consume)
        raise


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def ensure_group(client: aioredis.Redis, keys: QueueKeys) -> None:
    """Create stream and group at id 0 (idempotent): jobs added before any worker are kept."""
    try:
        await client.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def is_nogroup(e: BaseException) -> bool:
    """Redis lost the stream's consumer group (restarted without persistence, or flushed)."""
    return isinstance(e, ResponseError) and str(e).startswith("NOGROUP")


def _retry(settings: QueueSettings) -> Retry:
    """Reconnect-and-retry for about reconnect_s: rides out a Redis restart (BusyLoadingError,
    raised while Redis reloads its AOF, is a ConnectionError too)."""
    backoff = ExponentialBackoff(cap=0.5, base=0.025)
    retries, total = 0, 0.0
    while total < settings.reconnect_s and retries < 100:
        retries += 1
        total += backoff.compute(retries)
    return Retry(backoff, retries, supported_errors=(RedisConnectionError, RedisTimeoutError))


def connect(settings: QueueSettings) -> aioredis.Redis:
    """A client whose pool makes bursts wait for a connection instead of failing (redis-py's
    default pool raises MaxConnectionsError past 100), health-checks connections that sat idle
    and reconnects and retries a call that met a dead connection (Redis restarted).

    Its socket timeout outlasts a worker's XREADGROUP block (`block_ms`), so an idle read
    returns empty instead of timing out as if Redis were gone.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.max_connections,
        timeout=60,
        decode_responses=True,
        health_check_interval=15,
        socket_timeout=read_timeout_s(settings.block_ms),
        socket_connect_timeout=2,
        retry=_retry(settings),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis(connection_pool=pool)


def connect_blocking_reader(settings: QueueSettings, block_ms: int) -> aioredis.Redis:
    """One dedicated connection for a long blocking read, without automatic retries: its owner
    must see a broken link to know that a restart happened (and resynchronise). Its socket
    timeout outlasts `block_ms`: a read that times out means the link is gone, not idle."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        single_connection_client=True,
        socket_timeout=read_timeout_s(block_ms),
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


def redis_error(url: str, e: BaseException) -> GeneratorError:
    return GeneratorError(
        f"job queue Redis at {url} failed ({type(e).__name__}: {e}); fix: start Redis "
        "(`docker compose up redis` or `redis-server`), or set GROUNDWORK_QUEUE__REDIS_URL, or "
        "use GROUNDWORK_GENERATOR__BACKEND=inprocess"
    )


# -- outages -------------------------------------------------------------------------------


class Outage:
    """Whether the link to Redis is down, and since when; shared by every loop of one side.

    `failed()` marks the start (logged once), `ok()` the end (logged once) and must be called
    on every successful call, so that a flag raised by one failure never outlives the outage.
    `pause()` sleeps a jittered exponential backoff (tenacity's strategy) between tries.
    """

    def __init__(
        self,
        url: str,
        *,
        logger: logging.Logger | None = None,
        level: int = logging.ERROR,
        first_s: float = 0.05,
        max_s: float = 1.0,
    ) -> None:
        self.url = url
        self.since: float | None = None
        self._log = logger or log
        self._level = level
        self._wait = wait_exponential_jitter(multiplier=first_s, max=max_s, jitter=first_s)
        self._tries = 0

    def failed(self, e: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self._log.log(
                self._level,
                "Redis at %s unreachable (%s: %s); jobs wait, retrying until it is back",
                self.url,
                type(e).__name__,
                e,
            )

    def ok(self) -> None:
        if self.since is not None:
            back = logging.WARNING if self._level >= logging.WARNING else self._level
            self._log.log(
                back, "Redis at %s back after %.1fs", self.url, time.monotonic() - self.since
            )
            self.since = None
        self._tries = 0

    def down_for(self) -> float:
        """Seconds since the link was lost (0 while it is up)."""
        return 0.0 if self.since is None else time.monotonic() - self.since

    def next_wait_s(self) -> float:
        self._tries += 1
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = self._tries
        return float(self._wait(state))

    async def pause(self) -> None:
        await asyncio.sleep(self.next_wait_s())


async def ride_out(call: Callable[[], Awaitable[T]], outage: Outage, limit_s: float) -> T:
    """Run `call`, retrying link errors with jittered backoff for at most `limit_s` seconds
    (bounded: the caller decides what a lasting outage means)."""

    def note(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if error is not None:
            outage.failed(error)

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(LINK_ERRORS),
        stop=stop_after_delay(limit_s),
        wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
        before_sleep=note,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            out = await call()
    outage.ok()
    return out
