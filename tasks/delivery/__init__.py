"""Delivery: at least once from the broker, the effect at most once (docs/reliability.md).

- `transport`: kombu's Redis transport with an atomic take: a message moves from its queue
  into the taking worker's own unacked hash in one Lua script, so no kill, pause or cut link
  can catch it in between; idle consumers wait on a doorbell list per queue.
- `identity`: which incarnation of which worker this process is (per-incarnation keys).
- `claims`: a claim per call with a fencing token; only the owner runs it and stores its result.
- `backend`: Celery's Redis result backend, storing a call's result only under a valid claim.
- `keys`: the Redis key names all of them share.
"""
