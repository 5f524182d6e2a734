"""Generation jobs through Redis Streams.

- `generators.queue.protocol`: key layout, Lua scripts, connections, outage bookkeeping;
  what client and workers must agree on.
- `generators.queue.client`: `QueueGenerator`, the `Generator` that submits jobs and waits.
- `generators.queue.worker`: `Worker` and `run_worker`, the process that serves jobs.

Import from those modules; this package's `__init__` stays empty so that importing the client
never imports the worker, and the reverse.
"""
