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
  before any pixel is decoded;
- a cache keyed by what names the image (the task's cloud URI or Label
  Studio URL, never the presigned URL a download was redirected to), written
  atomically, so a second retrieve or a ranking downloads nothing again.

Redirects (see ``_TimeoutSession``): Label Studio's presign endpoints
(``/tasks/<id>/presign/`` or ``/resolve/``, the same under ``/projects/<id>/``,
``/storage-data/``)
may redirect to any http(s) host, because Label Studio signed that URL for a
storage an administrator connected (a bucket's host is not known in advance:
AWS gives each bucket a host of its own). Every other redirect, Label
Studio's own included, must stay within the policy's hosts.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qs, urljoin, urlparse

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
# Label Studio's endpoints that answer with a redirect to a URL it signed for a connected storage
_PRESIGN_PATH = re.compile(r"^/(tasks|projects)/\d+/(presign|resolve)/?$|^/storage-data/")
_HOSTS_SETTING = "ALLOWED_IMAGE_HOSTS"
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

    The first request must go to an allowed host (Label Studio's is one).
    A redirect is followed when it comes from one of Label Studio's presign
    endpoints (``_PRESIGN_PATH``: Label Studio signed the target for a storage
    its administrator connected, to whatever host the bucket has), or when
    its target is an allowed host. Anything else, e.g. an allowed image host
    or a Label Studio page redirecting elsewhere, is refused before the
    target is contacted; the task's failure (logged with its id) names the
    host and ALLOWED_IMAGE_HOSTS.
    requests drops the Authorization header when a redirect changes host or
    port, so Label Studio's token never reaches the bucket.
    """

    def __init__(self, allowed_hosts: frozenset[str], trusted: str, timeout: float) -> None:
        super().__init__()
        self._allowed = allowed_hosts
        self._trusted = trusted
        self._timeout = timeout

    def get_redirect_target(self, resp: requests.Response) -> str | None:  # noqa: D102 (requests' hook)
        target = super().get_redirect_target(resp)
        if target is not None:
            source, destination = urlparse(resp.url), urlparse(urljoin(resp.url, target))
            signed = source.netloc.lower() == self._trusted and bool(_PRESIGN_PATH.match(source.path))
            if destination.scheme not in ("http", "https"):
                raise ImageError(f"image host {source.netloc!r} redirected to a {destination.scheme!r} URL", "refused")
            if not signed and destination.netloc.lower() not in self._allowed:
                raise ImageError(
                    f"image host {source.netloc!r} redirected to {destination.netloc!r}, which is not "
                    f"allowed: add {destination.netloc} to {_HOSTS_SETTING} to allow it",
                    "refused",
                )
        return target

    def request(self, method: str, url: str, **kwargs):  # noqa: D102 (requests' signature)
        host = urlparse(url).netloc
        if host.lower() not in self._allowed:
            raise ImageError(
                f"image host {host!r} is not allowed: add {host} to {_HOSTS_SETTING} to allow it", "refused"
            )
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
        self._downloads = 0
        self._lock = threading.Lock()

    @property
    def downloads(self) -> int:
        """Images this loader has downloaded (cache hits and local files are not counted)."""
        return self._downloads

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
            raise ImageError(
                f"image host {parsed.netloc!r} is not Label Studio's nor in {_HOSTS_SETTING}: add "
                f"{parsed.netloc} to {_HOSTS_SETTING} to allow it",
                "refused",
            )
        return url

    def _is_local_file(self, url: str) -> bool:
        return bool(self.policy.document_root) and url.startswith("/data/local-files/")

    def _resolve_local(self, relative: str) -> str | None:
        """Local-files ``?d=`` paths, only under the document root (None: not ours to read)."""
        if not self.policy.document_root:
            return None
        return safe_build_path(self.policy.document_root, posixpath.normpath(relative).lstrip("/"))

    def path(self, url: object, task_id: int | None = None) -> str:
        """Download (or find in the cache) the image and return a local path to it."""
        url = self.check_url(url)
        if self._is_local_file(url):
            try:
                return self._local_path(url)
            except (OSError, ValueError) as exc:
                raise ImageError(f"could not read the image: {exc}", "missing") from None
        cached = self._cache_path(url)
        if cached is not None and os.path.isfile(cached):
            return cached
        try:
            return self._download(url, task_id, cached)
        except ImageError:
            raise
        except requests.HTTPError as exc:
            raise _http_failure(exc) from None
        except (OSError, ValueError, requests.RequestException) as exc:
            raise ImageError(f"could not fetch the image: {_without_query(exc)}") from None
        except Exception as exc:  # the SDK raises bare Exception for some URL kinds
            raise ImageError(f"could not fetch the image: {type(exc).__name__}") from None

    def _cache_path(self, url: str) -> str | None:
        """Where the image of ``url`` is cached: named by the URL the task holds (for a cloud task its
        ``s3://`` URI), never by the signed URL Label Studio redirects to, which changes on every request."""
        if not self.policy.cache_dir:
            return None
        url = _cloud_uri(url) or url
        digest = hashlib.sha256(url.encode()).hexdigest()[:32]
        suffix = os.path.splitext(urlparse(url).path)[1].lower()
        return os.path.join(self.policy.cache_dir, digest + (suffix if re.fullmatch(r"\.\w{1,8}", suffix) else ""))

    def _download(self, url: str, task_id: int | None, cached: str | None) -> str:
        """Fetch through the SDK into a private folder, then move the file into the cache in one step
        (a download cut short leaves nothing behind that a later call would take for the image)."""
        # without a document root the SDK must fetch local files from Label Studio: no resolver
        # (an installed resolver that answers None makes the SDK refuse the file instead)
        resolver = self._resolve_local if self.policy.document_root else None
        session = _TimeoutSession(
            self.policy.allowed_hosts, urlparse(self.policy.label_studio_url).netloc.lower(), self.policy.timeout
        )
        scratch = None
        if cached is not None:
            os.makedirs(self.policy.cache_dir, exist_ok=True)
            scratch = tempfile.mkdtemp(prefix=".download-", dir=self.policy.cache_dir)
        try:
            with http_session(session), local_files_resolver(resolver):
                fetched = get_local_path(
                    url,
                    cache_dir=scratch,
                    hostname=self.policy.label_studio_url,
                    access_token=self._access_token(),
                    task_id=task_id,
                    download_resources=True,
                )
            if scratch is None or not fetched.startswith(scratch + os.sep):
                return fetched  # no cache of ours (the SDK's own), or a file the SDK found on this disk
            with self._lock:
                self._downloads += 1
            os.replace(fetched, cached)
            return cached
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def _local_path(self, url: str) -> str:
        """The file itself, under the document root (the SDK would copy it into the cache)."""
        with local_files_resolver(self._resolve_local):
            filepath = resolve_local_storage_file(url)
        if not os.path.isfile(filepath):
            raise FileNotFoundError(f"no such local file: {os.path.relpath(filepath, self.policy.document_root)}")
        return filepath

    def load(self, url: object, task_id: int | None = None) -> Image.Image:
        """Fetch and decode, with EXIF orientation applied (as browsers show it).

        A downloaded file that does not decode leaves the cache, so that the
        object, once replaced in its storage, is fetched again.
        """
        path = self.path(url, task_id)
        try:
            return self.decode(path)
        except ImageError as exc:
            if exc.reason == "undecodable" and self.policy.cache_dir and path.startswith(self.policy.cache_dir):
                with contextlib.suppress(OSError):
                    os.remove(path)
            raise

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
            raise ImageError(
                f"image of {width}x{height} pixels exceeds MAX_IMAGE_PIXELS={self.policy.max_pixels}", "too_large"
            )
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


def _cloud_uri(url: str) -> str | None:
    """The ``s3://`` (etc.) URI inside Label Studio's ``/tasks/<id>/resolve/?fileuri=<base64>`` URL, which
    its task API hands out instead of the URI (``resolve_uri``, on by default); None for other URLs."""
    parsed = urlparse(url)
    if not _PRESIGN_PATH.match(parsed.path) or parsed.path.startswith("/storage-data/"):
        return None
    fileuri = parse_qs(parsed.query).get("fileuri", [""])[-1]
    try:
        uri = base64.urlsafe_b64decode(fileuri + "=" * (-len(fileuri) % 4)).decode()
    except ValueError:
        return None
    return uri if urlparse(uri).scheme in _CLOUD_SCHEMES else None


def _http_failure(exc: requests.HTTPError) -> ImageError:
    """An HTTP error answer as a task failure, by what it means for the image.

    404/410 or S3's NoSuchKey: the object is gone (``missing``); 401/403: its
    host refuses the credentials (``refused``; AWS also answers 403 for a
    missing key when the keys may not list the bucket); 424 is Label Studio
    proxying a storage (presign off) that failed: its ``detail`` (the
    storage's own error) tells which; anything else is ``unreachable``.
    """
    response = exc.response
    status, host = (response.status_code, urlparse(response.url).netloc) if response is not None else (None, "?")
    detail = _storage_detail(response) if response is not None else ""
    text = f"HTTP {status} from {host}" + (f": {detail}" if detail else "")
    if status in (404, 410) or any(code in detail for code in ("NoSuchKey", "Not Found", "(404)", "BlobNotFound")):
        return ImageError(f"image not found in its storage ({text})", "missing")
    if status in (401, 403) or any(
        code in detail for code in ("AccessDenied", "InvalidAccessKeyId", "Forbidden", "SignatureDoesNotMatch", "(403)")
    ):
        return ImageError(f"image access denied ({text}): check the storage's credentials in Label Studio", "refused")
    if status == 424:  # S3's get_object failed inside Label Studio, which logs why and answers "Stream is None"
        return ImageError(
            f"Label Studio could not read the image from its storage ({text}): a deleted key, "
            "revoked credentials or a storage down; Label Studio's log says which"
        )
    return ImageError(f"could not fetch the image ({text})")


def _storage_detail(response: requests.Response) -> str:
    """What the storage said: the ``detail`` of Label Studio's failed proxy (424), or the ``<Code>`` of
    an S3-style XML error; shortened, without query strings."""
    if response.status_code == 424:
        try:
            detail = str(response.json().get("detail") or "")
        except ValueError:
            return ""
    else:
        found = (
            re.search(r"<Code>(\w{1,64})</Code>", response.text[:4096])
            if "xml" in (response.headers.get("Content-Type") or "")
            else None
        )
        detail = found.group(1) if found else ""
    return " ".join(word.split("?")[0] if "://" in word else word for word in detail.split())[:300]


def _without_query(exc: Exception) -> str:
    """An exception message with URL query strings cut, since they may carry signatures or tokens
    (requests names a failed URL's path and query without its scheme: "with url: /key?X-Amz-Signature=...")."""
    return re.sub(r"\?[^\s'\")]*", "", str(exc))
