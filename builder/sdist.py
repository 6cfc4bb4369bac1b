"""Downloads an sdist and proves it is the file the master recorded (sha256 and size)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from common.job_spec import JobSpec


class SdistUnavailable(Exception):
    """The sdist could not be downloaded (transient on PyPI's CDN, or gone)."""


class SdistMismatch(Exception):
    """The downloaded bytes are not the file the master recorded."""


@retry(
    retry=retry_if_exception_type(SdistUnavailable),
    wait=wait_exponential_jitter(initial=2, max=60),
    stop=stop_after_attempt(4),
    reraise=True,
)
def fetch_sdist(spec: JobSpec, folder: Path, limit: int = 1024**3) -> Path:
    name = Path(spec.sdist_filename).name
    if not name or name != spec.sdist_filename:
        raise SdistMismatch(f"unsafe sdist filename {spec.sdist_filename!r}")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    digest = hashlib.sha256()
    size = 0
    try:
        with httpx.stream("GET", spec.sdist_url, follow_redirects=True, timeout=120) as response:
            if response.status_code != 200:
                raise SdistUnavailable(f"HTTP {response.status_code} for {spec.sdist_url}")
            with target.open("wb") as out:
                for chunk in response.iter_bytes(1024 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise SdistMismatch(f"sdist larger than {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
    except httpx.TransportError as exc:
        raise SdistUnavailable(f"{spec.sdist_url}: {exc!r}") from exc
    if digest.hexdigest() != spec.sdist_sha256.lower():
        raise SdistMismatch(f"sha256 {digest.hexdigest()} != expected {spec.sdist_sha256}")
    if spec.sdist_size is not None and size != spec.sdist_size:
        raise SdistMismatch(f"size {size} != expected {spec.sdist_size}")
    return target
