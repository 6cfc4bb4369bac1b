"""Which URLs the farm downloads an sdist from: absolute http(s) URLs with a host.

The master records no other sdist URL (a relative link from a mirror is resolved before
it is stored), and a builder handed any other fails the job at once, for good: no later
attempt can fetch it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

DOWNLOAD_SCHEMES = ("http", "https")


def is_download_url(url: str) -> bool:
    """An absolute http:// or https:// URL with a host, without spaces or control
    characters: one an HTTP client can ask for as it is."""
    if not url or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in url):
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is no number raises here
    except ValueError:
        return False
    return parts.scheme.lower() in DOWNLOAD_SCHEMES and bool(parts.hostname)
