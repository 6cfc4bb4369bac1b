"""Failed authentications counted per client address, to refuse a guesser for a while.

Tokens are 256-bit random secrets, so guessing one is hopeless; the limit is there so
that a client sending wrong tokens costs the master no database lookups and fills no
log once it has had its share of failures. Kept in each HTTP process's memory: with
several worker processes a client gets up to `limit` failures per window from each,
which still bounds the cost, and counting in the database would add a write per failure
(the very load the limit avoids). Used from the event loop only, so without a lock.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

# Addresses followed at once: beyond this the one failing longest ago is forgotten, so
# that a flood of addresses cannot grow the table without bound.
MAX_CLIENTS = 10_000


def client_key(address: str) -> str:
    """An IPv4 address, or the /64 network of an IPv6 one (a host usually has a whole
    /64 to pick addresses from); anything else as given."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class AuthThrottle:
    """At most `limit` failed authentications per client in any `window` seconds."""

    def __init__(
        self,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def blocked_for(self, address: str) -> int:
        """Whole seconds until `address` may try again (0: it may now)."""
        now = self.clock()
        failures = self._recent(client_key(address), now)
        if failures is None or len(failures) < self.limit:
            return 0
        return max(1, math.ceil(failures[-self.limit] + self.window - now))

    def failed(self, address: str) -> bool:
        """Count a failure; True when it is the one that reaches the limit."""
        key = client_key(address)
        now = self.clock()
        failures = self._recent(key, now)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self.limit)
        failures.append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
        return len(failures) == self.limit
