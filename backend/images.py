"""Fetching task images safely, and decoding them within the pixel limit (``model.images`` decodes).

Downloads go through label-studio-sdk's ``get_local_path`` (it knows Label
Studio's upload, local-files, storage-proxy and cloud-presign URLs and the
right auth header, and caches what it downloads). Around it we enforce what
the SDK leaves to its caller:

- absolute URLs only to Label Studio's host or ALLOWED_IMAGE_HOSTS (no
  server-side request forgery through task data);
- local files only under LOCAL_FILES_DOCUMENT_ROOT (the SDK's own
  ``safe_build_path`` refuses ``..``);
- a timeout on every request, and a pixel limit checked from the header
  before any pixel is decoded.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Callable
from typing import TypeVar
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urljoin, urlparse

import requests

# label-studio-sdk 2.x has no public name for its media download helpers: they live only in its private
# ``_extensions`` package, which the SDK's own converter imports too. Re-implementing them would mean
# copying its knowledge of Label Studio's URL kinds, so we import them there (requirements.txt pins the SDK).
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
    get_local_path,
    http_session,
    local_files_resolver,
    resolve_local_storage_file,
    safe_build_path,
)
from PIL import Image, UnidentifiedImageError

from backend.errors import ImageError
from model.images import displayed, displayed_size

logger = logging.getLogger(__name__)

_LS_RELATIVE = ("/data/", "data/", "/upload", "upload/", "/storage-data/")
_CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may come from and how big they may be."""

    label_studio_url: str
    allowed_hosts: frozenset[str]
    document_root: str
    max_pixels: int
    timeout: float
    cache_dir: str


class _TimeoutSession(requests.Session):
    """A session that refuses hosts outside the policy and never waits forever.

    Redirects are checked too: only Label Studio (``trusted``, whose cloud
    presign answers redirect to the bucket's host) may send us elsewhere; any
    other host may only redirect to an allowed host.
    """

    def __init__(self, allowed_hosts: frozenset[str], trusted: str, timeout: float) -> None:
        super().__init__()
        self._allowed = allowed_hosts
        self._trusted = trusted
        self._timeout = timeout

    def get_redirect_target(self, resp: requests.Response) -> str | None:  # noqa: D102 (requests' hook)
        target = super().get_redirect_target(resp)
        if target is not None:
            source = urlparse(resp.url).netloc.lower()
            destination = urlparse(urljoin(resp.url, target)).netloc.lower()
            if source != self._trusted and destination not in self._allowed:
                raise ImageError(f"image host {source!r} redirected to {destination!r}, which is not allowed", "refused")
        return target

    def request(self, method: str, url: str, **kwargs):  # noqa: D102 (requests' signature)
        if urlparse(url).netloc.lower() not in self._allowed:
            raise ImageError(f"image host {urlparse(url).netloc!r} is not allowed", "refused")
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, **kwargs)


class ImageLoader:
    """Turns task image URLs into decoded RGB images, as Label Studio displays them.

    Args:
        policy (ImagePolicy): the limits above.
        access_token (Callable[[], str]): returns a token Label Studio accepts
            (a legacy token, or an access JWT obtained from a personal access token).
    """

    def __init__(self, policy: ImagePolicy, access_token: Callable[[], str]) -> None:
        self.policy = policy
        self._access_token = access_token

    def check_url(self, url: object) -> str:
        """The URL if the policy allows it; raises ImageError otherwise."""
        if not isinstance(url, str) or not url.strip():
            raise ImageError("the task has no image URL", "missing")
        parsed = urlparse(url)
        if url.startswith(_LS_RELATIVE) or parsed.scheme in _CLOUD_SCHEMES:
            if not self.policy.label_studio_url and not self._is_local_file(url):
                raise ImageError("LABEL_STUDIO_URL is not set, so Label Studio URLs cannot be fetched", "refused")
            return url
        if parsed.scheme not in ("http", "https"):
            raise ImageError(f"unsupported image URL scheme {parsed.scheme!r}", "refused")
        if parsed.netloc.lower() not in self.policy.allowed_hosts:
            raise ImageError(f"image host {parsed.netloc!r} is not Label Studio's nor in ALLOWED_IMAGE_HOSTS", "refused")
        return url

    def _is_local_file(self, url: str) -> bool:
        return bool(self.policy.document_root) and url.startswith("/data/local-files/")

    def _resolve_local(self, relative: str) -> str | None:
        """Local-files ``?d=`` paths, only under the document root (None: not ours to read)."""
        if not self.policy.document_root:
            return None
        return safe_build_path(self.policy.document_root, posixpath.normpath(relative).lstrip("/"))

    def path(self, url: object, task_id: int | None = None) -> str:
        """Download (or find) the image and return a local path to it."""
        url = self.check_url(url)
        hosts = self.policy.allowed_hosts
        try:
            if self._is_local_file(url):
                return self._local_path(url)
            if self.policy.cache_dir:  # the SDK writes downloads there without creating it
                os.makedirs(self.policy.cache_dir, exist_ok=True)
            # without a document root the SDK must fetch local files from Label Studio: no resolver
            # (an installed resolver that answers None makes the SDK refuse the file instead)
            resolver = self._resolve_local if self.policy.document_root else None
            session = _TimeoutSession(hosts, urlparse(self.policy.label_studio_url).netloc.lower(), self.policy.timeout)
            with http_session(session), local_files_resolver(resolver):
                return get_local_path(
                    url,
                    cache_dir=self.policy.cache_dir or None,
                    hostname=self.policy.label_studio_url,
                    access_token=self._access_token(),
                    task_id=task_id,
                    download_resources=True,
                )
        except ImageError:
            raise
        except (OSError, ValueError, requests.RequestException) as exc:
            raise ImageError(f"could not fetch the image: {_without_query(exc)}") from None
        except Exception as exc:  # the SDK raises bare Exception for some URL kinds
            raise ImageError(f"could not fetch the image: {type(exc).__name__}") from None

    def _local_path(self, url: str) -> str:
        """The file itself, under the document root (the SDK would copy it into the cache)."""
        with local_files_resolver(self._resolve_local):
            filepath = resolve_local_storage_file(url)
        if not os.path.isfile(filepath):
            raise FileNotFoundError(f"no such local file: {os.path.relpath(filepath, self.policy.document_root)}")
        return filepath

    def load(self, url: object, task_id: int | None = None) -> Image.Image:
        """Fetch and decode, with EXIF orientation applied (as browsers show it)."""
        return self.decode(self.path(url, task_id))

    def decode(self, path: str) -> Image.Image:
        """Decode a local image file into RGB, refusing ones over the pixel limit."""
        try:
            with Image.open(path) as img:
                if img.width * img.height > self.policy.max_pixels:
                    raise ImageError(
                        f"image of {img.width}x{img.height} pixels exceeds MAX_IMAGE_PIXELS={self.policy.max_pixels}",
                        "too_large",
                    )
                return displayed(img)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise ImageError(f"not a decodable image: {type(exc).__name__}", "undecodable") from None

    def load_many(
        self, items: list[tuple[object, int | None]], *, workers: int, then: Callable[[Image.Image], R] | None = None
    ) -> list[Image.Image | R | ImageError]:
        """Load several images concurrently; a failure is returned in its slot, not raised.

        ``then`` runs on each decoded image in the same worker thread (PIL and
        torch release the GIL), so a conversion is spread over the cores too.
        """
        convert = then or (lambda image: image)
        return _concurrently(lambda item: convert(self.load(*item)), items, workers=workers)

    def path_many(self, items: list[tuple[object, int | None]], *, workers: int) -> list[str | ImageError]:
        """Fetch several images concurrently (see ``load_many``)."""
        return _concurrently(lambda item: self.path(*item), items, workers=workers)

    def size(self, path: str) -> tuple[int, int]:
        """(width, height) as displayed (EXIF rotation applied), read from the header only."""
        try:
            with Image.open(path) as img:
                width, height = displayed_size(img)
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"not a decodable image: {type(exc).__name__}", "undecodable") from None
        if width * height > self.policy.max_pixels:
            raise ImageError(f"image of {width}x{height} pixels exceeds MAX_IMAGE_PIXELS={self.policy.max_pixels}",
                             "too_large")
        return width, height


def _concurrently(fn: Callable[[T], R], items: list[T], *, workers: int) -> list[R | ImageError]:
    """``fn`` over ``items`` in a thread pool, keeping each ImageError in its slot."""
    def one(item: T) -> R | ImageError:
        try:
            return fn(item)
        except ImageError as exc:
            return exc

    if len(items) <= 1:
        return [one(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(one, items))

def _without_query(exc: Exception) -> str:
    """An exception message with URL query strings cut, since they may carry signatures or tokens."""
    text = str(exc)
    return " ".join(word.split("?")[0] if "://" in word else word for word in text.split())
