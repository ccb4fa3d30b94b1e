"""Tests of backend/images.py (URL policy, fetching, decoding), of model/images.py
(the detector's input) and of backend/lsclient.py (the token the image
downloads authenticate with).

HTTP is real: a tiny http.server on 127.0.0.1 (tests/helpers.py) stands in for
Label Studio and for image hosts.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import jwt
import numpy as np
import pytest
import requests
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

import backend.lsclient as lsclient
from backend.errors import ImageError
from backend.images import ImageLoader
from backend.lsclient import LabelStudioAuth, is_personal_access_token
from backend.service import build_service
from helpers import BLUE, RED, LocalServer, Route, image_bytes, make_settings, write_exif_rotated_jpeg, write_image
from model.images import image_tensor, load_image

LS = "http://ls.example.com:8080"
PNG = Route(200, image_bytes(30, 20), "image/png")


def _loader(tmp_path, **overrides) -> ImageLoader:
    """The loader the service builds from these settings (policy included)."""
    return build_service(make_settings(tmp_path / "models", **overrides)).images


class TestCheckUrl:
    """The policy table: what may be fetched, before anything is fetched."""

    ALLOWED = ("images.example.com", "cdn.example.com:8443")

    @pytest.fixture
    def with_ls(self, tmp_path) -> ImageLoader:
        return _loader(tmp_path, label_studio_url=LS, allowed_image_hosts=self.ALLOWED)

    @pytest.fixture
    def without_ls(self, tmp_path) -> ImageLoader:
        return _loader(tmp_path, allowed_image_hosts=self.ALLOWED)

    @pytest.mark.parametrize(
        "url",
        [
            "/data/upload/3/abc-photo.png",
            "upload/3/abc-photo.png",
            "/data/local-files/?d=images/a.png",
            "/storage-data/uploaded/?filepath=upload/3/a.png",
            "s3://bucket/a.png",
            "gs://bucket/a.png",
            "azure-blob://container/a.png",
            "http://ls.example.com:8080/data/local-files/?d=a.png",  # a synced storage's absolute URL
            "https://images.example.com/a.png",
            "https://IMAGES.Example.com/a.png",
            "https://cdn.example.com:8443/a.png",
        ],
    )
    def test_allowed_with_label_studio(self, with_ls, url):
        assert with_ls.check_url(url) == url

    @pytest.mark.parametrize(
        "url",
        ["/data/upload/3/abc-photo.png", "/data/local-files/?d=a.png", "s3://bucket/a.png", "gs://bucket/a.png"],
    )
    def test_label_studio_urls_need_label_studio_url(self, without_ls, url):
        with pytest.raises(ImageError, match="LABEL_STUDIO_URL"):
            without_ls.check_url(url)

    def test_local_files_without_label_studio_url_need_the_document_root(self, tmp_path):
        loader = _loader(tmp_path, local_files_document_root=str(tmp_path))
        assert loader.check_url("/data/local-files/?d=a.png") == "/data/local-files/?d=a.png"
        with pytest.raises(ImageError, match="LABEL_STUDIO_URL"):
            loader.check_url("/data/upload/3/a.png")  # uploads live in Label Studio, not in the root

    @pytest.mark.parametrize(
        "url",
        [
            "https://evil.example.com/a.png",
            "https://images.example.com:444/a.png",  # an allowed host on another port
            "https://cdn.example.com/a.png",  # allowed only on port 8443
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:8080/data/upload/1/a.png",
            "http://ls.example.com/a.png",  # Label Studio's host without its port
            "https://user:pw@images.example.com/a.png",
            "//images.example.com/a.png",
        ],
    )
    def test_other_hosts_are_refused(self, with_ls, url):
        with pytest.raises(ImageError, match="not allowed|not Label Studio|scheme"):
            with_ls.check_url(url)

    @pytest.mark.parametrize(
        "url",
        [
            "file:///etc/passwd",
            "data:image/png;base64,iVBORw0KGgo=",
            "ftp://images.example.com/a.png",
            "gopher://images.example.com/",
            "/etc/passwd",
            "images/a.png",
        ],
    )
    def test_other_schemes_are_refused(self, with_ls, url):
        with pytest.raises(ImageError, match="scheme"):
            with_ls.check_url(url)

    @pytest.mark.parametrize("url", [None, "", "   ", 42, ["/data/upload/1/a.png"]])
    def test_no_url(self, with_ls, url):
        with pytest.raises(ImageError, match="no image URL"):
            with_ls.check_url(url)


class TestDecode:
    def test_png_size_and_mode(self, tmp_path):
        img = _loader(tmp_path).decode(str(write_image(tmp_path / "a.png", 200, 100)))
        assert (img.size, img.mode) == ((200, 100), "RGB")

    @pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
    def test_other_modes_become_rgb(self, tmp_path, mode):
        path = tmp_path / "m.png"
        Image.new(mode, (20, 10)).save(path)
        img = _loader(tmp_path).decode(str(path))
        assert (img.size, img.mode) == ((20, 10), "RGB")

    def test_exif_rotation_gives_the_displayed_image(self, tmp_path):
        path = write_exif_rotated_jpeg(tmp_path / "r.jpg", 60, 40, orientation=6)
        img = _loader(tmp_path).decode(str(path))
        assert img.size == (40, 60)  # stored 60 x 40, shown rotated by 90 degrees
        # stored left half red -> shown top half red (rotated clockwise)
        top, bottom = img.getpixel((20, 5)), img.getpixel((20, 55))
        assert max(abs(a - b) for a, b in zip(top, RED)) < 40, top  # JPEG: close, not exact
        assert max(abs(a - b) for a, b in zip(bottom, BLUE)) < 40, bottom

    def test_exif_orientation_1_is_unchanged(self, tmp_path):
        path = write_exif_rotated_jpeg(tmp_path / "r.jpg", 60, 40, orientation=1)
        assert _loader(tmp_path).decode(str(path)).size == (60, 40)

    def test_text_file_is_not_an_image(self, tmp_path):
        path = tmp_path / "fake.png"
        path.write_text("hello, I am text")
        with pytest.raises(ImageError, match="not a decodable image"):
            _loader(tmp_path).decode(str(path))

    def test_truncated_file(self, tmp_path):
        data = image_bytes(300, 200, fmt="JPEG")
        path = tmp_path / "cut.jpg"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageError):
            _loader(tmp_path).decode(str(path))

    def test_missing_file(self, tmp_path):
        with pytest.raises(ImageError):
            _loader(tmp_path).decode(str(tmp_path / "nope.png"))

    def test_pixel_limit(self, tmp_path):
        loader = _loader(tmp_path, max_image_pixels=200 * 100)
        assert loader.decode(str(write_image(tmp_path / "at.png", 200, 100))).size == (200, 100)
        with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):
            loader.decode(str(write_image(tmp_path / "over.png", 201, 100)))


class TestLocalFiles:
    @pytest.fixture
    def root(self, tmp_path):
        root = tmp_path / "root"
        write_image(root / "sub" / "in.png", 32, 16)
        write_image(tmp_path / "outside.png", 50, 50)
        return root

    def test_file_under_the_root(self, tmp_path, root):
        loader = _loader(tmp_path, local_files_document_root=str(root))
        assert loader.load("/data/local-files/?d=sub/in.png").size == (32, 16)

    def test_the_file_is_read_in_place_not_copied(self, tmp_path, root):
        """A local-files project of many gigabytes must not be duplicated into the image cache."""
        cache = tmp_path / "cache"
        loader = _loader(tmp_path, local_files_document_root=str(root), image_cache_dir=str(cache))
        assert loader.path("/data/local-files/?d=sub/in.png") == str(root / "sub" / "in.png")
        assert not cache.exists() or not any(cache.iterdir())

    @pytest.mark.parametrize(
        "d", ["../outside.png", "..%2Foutside.png", "sub/../../outside.png", "../../etc/passwd", "/../outside.png"]
    )
    def test_path_traversal_is_refused(self, tmp_path, root, d):
        loader = _loader(tmp_path, local_files_document_root=str(root))
        with pytest.raises(ImageError):
            loader.load(f"/data/local-files/?d={d}")

    def test_missing_file(self, tmp_path, root):
        loader = _loader(tmp_path, local_files_document_root=str(root))
        with pytest.raises(ImageError):
            loader.load("/data/local-files/?d=sub/none.png")

    def test_load_many_keeps_order_and_failures_in_place(self, tmp_path, root):
        write_image(root / "b.png", 8, 4)
        loader = _loader(tmp_path, local_files_document_root=str(root))
        items = [("/data/local-files/?d=sub/in.png", 1), ("file:///etc/passwd", 2), ("/data/local-files/?d=b.png", 3)]
        out = loader.load_many(items, workers=3)
        assert out[0].size == (32, 16)
        assert isinstance(out[1], ImageError)
        assert out[2].size == (8, 4)


class TestFetchHttp:
    def test_allowed_host(self, tmp_path):
        with LocalServer({"/img.png": PNG}) as server:
            loader = _loader(tmp_path, allowed_image_hosts=(server.netloc,))
            img = loader.load(f"{server.url}/img.png")
        assert img.size == (30, 20)
        assert [s.path for s in server.seen] == ["/img.png"]

    def test_token_is_not_sent_to_other_hosts(self, tmp_path):
        with LocalServer({"/img.png": PNG}) as server:
            loader = _loader(
                tmp_path, label_studio_url=LS, api_key="legacy-token-123", allowed_image_hosts=(server.netloc,)
            )
            loader.load(f"{server.url}/img.png")
        assert "Authorization" not in server.seen[0].headers

    def test_not_allowed_port_is_refused_without_a_request(self, tmp_path):
        with LocalServer({"/img.png": PNG}) as allowed, LocalServer({"/img.png": PNG}) as other:
            loader = _loader(tmp_path, allowed_image_hosts=(allowed.netloc,))
            with pytest.raises(ImageError, match="not allowed|not Label Studio"):
                loader.load(f"{other.url}/img.png")
            with pytest.raises(ImageError):
                loader.load(f"http://localhost:{other.netloc.split(':')[1]}/img.png")
        assert other.seen == []

    def test_redirect_to_a_host_not_allowed_is_refused(self, tmp_path):
        with LocalServer({"/img.png": PNG}) as target:
            with LocalServer({"/img.png": Route(302, b"", location=f"{target.url}/img.png")}) as allowed:
                loader = _loader(tmp_path, allowed_image_hosts=(allowed.netloc,))
                with pytest.raises(ImageError, match="redirected"):
                    loader.load(f"{allowed.url}/img.png")
        assert target.seen == []

    def test_redirect_between_allowed_hosts_is_followed(self, tmp_path):
        with LocalServer({"/img.png": PNG}) as target:
            with LocalServer({"/img.png": Route(302, b"", location=f"{target.url}/img.png")}) as allowed:
                loader = _loader(tmp_path, allowed_image_hosts=(allowed.netloc, target.netloc))
                assert loader.load(f"{allowed.url}/img.png").size == (30, 20)

    def test_label_studio_presign_may_redirect_anywhere(self, tmp_path):
        # Label Studio's presign endpoint redirects to the bucket's host, which no setting lists.
        with LocalServer({"/img.png": PNG}) as bucket:
            with LocalServer({"/tasks/5/presign/": Route(303, b"", location=f"{bucket.url}/img.png?sig=1")}) as ls:
                loader = _loader(tmp_path, label_studio_url=ls.url, api_key="legacy-token-123")
                assert loader.load("s3://bucket/img.png", task_id=5).size == (30, 20)
        assert [s.path.split("?")[0] for s in ls.seen] == ["/tasks/5/presign/"]
        assert ls.seen[0].headers["Authorization"] == "Token legacy-token-123"
        assert "Authorization" not in bucket.seen[0].headers  # the token stays with Label Studio

    def test_other_label_studio_pages_redirect_only_within_the_policy(self, tmp_path):
        with LocalServer({"/img.png": PNG}) as elsewhere:
            with LocalServer({"/data/local-files/": Route(302, b"", location=f"{elsewhere.url}/img.png")}) as ls:
                loader = _loader(tmp_path, label_studio_url=ls.url, api_key="legacy-token-123")
                with pytest.raises(ImageError) as info:
                    loader.load("/data/local-files/?d=a.png", task_id=5)
        assert elsewhere.seen == []
        assert info.value.reason == "refused"
        assert f"add {elsewhere.netloc} to ALLOWED_IMAGE_HOSTS" in str(info.value)

    def test_refused_host_names_the_host_and_the_setting(self, tmp_path):
        loader = _loader(tmp_path, label_studio_url=LS)
        with pytest.raises(ImageError) as info:
            loader.load("https://photos.example.org/a.png")
        assert "photos.example.org" in str(info.value) and "ALLOWED_IMAGE_HOSTS" in str(info.value)

    def test_http_error_message_has_no_query_string(self, tmp_path):
        with LocalServer({}) as server:
            loader = _loader(tmp_path, allowed_image_hosts=(server.netloc,))
            with pytest.raises(ImageError) as info:
                loader.load(f"{server.url}/missing.png?X-Amz-Signature=SIGNATURE123")
        assert "404" in str(info.value)
        assert "SIGNATURE123" not in str(info.value)

    def test_not_an_image_over_http(self, tmp_path):
        with LocalServer({"/page.png": Route(200, b"<html>hi</html>", "text/html")}) as server:
            loader = _loader(tmp_path, allowed_image_hosts=(server.netloc,))
            with pytest.raises(ImageError, match="not a decodable image"):
                loader.load(f"{server.url}/page.png")

    def test_slow_host_times_out(self, tmp_path):
        """The host answers only after the test is over: without a timeout the load would succeed."""
        released = threading.Event()

        def slow(_):
            released.wait(30)
            return PNG

        with LocalServer({"/slow.png": slow}) as server:
            loader = _loader(tmp_path, allowed_image_hosts=(server.netloc,), fetch_timeout=0.3)
            try:
                with pytest.raises(ImageError):
                    loader.load(f"{server.url}/slow.png")
            finally:
                released.set()


class TestFetchFromLabelStudio:
    """Relative task URLs are fetched from LABEL_STUDIO_URL with the backend's token."""

    def test_upload_with_legacy_token(self, tmp_path):
        def upload(seen):
            ok = seen.headers.get("Authorization") == "Token legacy-token-123"
            return PNG if ok else Route(401, b"no")

        routes = {"/storage-data/uploaded/": upload, "/data/upload/3/photo.png": upload}
        with LocalServer(routes) as ls:
            loader = _loader(tmp_path, label_studio_url=ls.url, api_key="legacy-token-123")
            assert loader.load("/data/upload/3/photo.png", task_id=5).size == (30, 20)
        assert any(s.headers.get("Authorization") == "Token legacy-token-123" for s in ls.seen)

    def test_local_files_without_a_document_root_come_from_label_studio(self, tmp_path):
        def local_file(seen):
            ok = seen.path == "/data/local-files/?d=images/a.png" and seen.headers.get("Authorization")
            return PNG if ok else Route(404, b"no")

        with LocalServer({"/data/local-files/": local_file}) as ls:
            loader = _loader(tmp_path, label_studio_url=ls.url, api_key="legacy-token-123")
            assert loader.load("/data/local-files/?d=images/a.png", task_id=5).size == (30, 20)
        assert [s.path for s in ls.seen] == ["/data/local-files/?d=images/a.png"]

    def test_without_token_nothing_is_sent(self, tmp_path):
        with LocalServer({"/data/upload/3/photo.png": PNG}) as ls:
            loader = _loader(tmp_path, label_studio_url=ls.url)
            with pytest.raises(ImageError):
                loader.load("/data/upload/3/photo.png")
        assert ls.seen == []


def _truncating_server(declared: int, sent: bytes):
    """A raw HTTP server on 127.0.0.1 that promises ``declared`` bytes, sends ``sent`` and hangs up
    (an S3 server stopped in the middle of a download). Returns (url, stop)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: "
                    + str(declared).encode()
                    + b"\r\n\r\n"
                    + sent
                )

    threading.Thread(target=serve, daemon=True).start()

    def close() -> None:
        stop.set()
        listener.close()

    return f"http://127.0.0.1:{listener.getsockname()[1]}", close


class TestCloudImages:
    """``s3://`` task images through Label Studio's presign endpoint: the cache, and the failures."""

    def test_the_cache_is_keyed_by_the_cloud_uri_not_the_signed_url(self, tmp_path):
        signatures = iter(range(100))

        def presign(seen):  # a new signature on every request, as Label Studio's are
            return Route(303, b"", location=f"{bucket.url}/img.png?X-Amz-Signature={next(signatures)}")

        routes = {"/tasks/5/presign/": presign, "/tasks/6/presign/": presign}
        with LocalServer({"/img.png": PNG}) as bucket, LocalServer(routes) as ls:
            loader = _loader(tmp_path, label_studio_url=ls.url, api_key="legacy-token-123")
            first = loader.path("s3://bucket/img.png", task_id=5)
            again = [loader.path("s3://bucket/img.png", task_id=5) for _ in range(3)]
            assert loader.load("s3://bucket/img.png", task_id=5).size == (30, 20)
            other = loader.path("s3://bucket/other/img.png", task_id=6)  # same name, another object
        assert again == [first] * 3 and other != first
        assert loader.downloads == 2
        assert len(bucket.seen) == 2 and len(ls.seen) == 2
        assert [p.name for p in (tmp_path / "models" / ".cache" / "images").iterdir()] != []
        assert not list((tmp_path / "models" / ".cache" / "images").glob(".download-*"))

    def test_label_studios_resolve_url_shares_the_cloud_uris_cache(self, tmp_path):
        """/api/tasks hands out ``<LS>/tasks/<id>/resolve/?fileuri=<base64>``, /predict the ``s3://`` URI."""
        import base64

        with LocalServer({"/img.png": PNG}) as bucket:
            redirect = Route(303, b"", location=f"{bucket.url}/img.png")
            with LocalServer({"/tasks/5/presign/": redirect, "/tasks/5/resolve/": redirect}) as ls:
                loader = _loader(tmp_path, label_studio_url=ls.url, api_key="legacy-token-123")
                fileuri = base64.urlsafe_b64encode(b"s3://bucket/img.png").decode()
                resolved = loader.path(f"{ls.url}/tasks/5/resolve/?fileuri={fileuri}", task_id=5)
                assert loader.path("s3://bucket/img.png", task_id=5) == resolved
        assert loader.downloads == 1 and len(bucket.seen) == 1

    def test_a_download_cut_short_is_not_cached(self, tmp_path):
        body = image_bytes(30, 20)
        url, close = _truncating_server(len(body), body[: len(body) // 2])
        try:
            with LocalServer({"/tasks/5/presign/": Route(303, b"", location=f"{url}/img.png")}) as ls:
                loader = _loader(tmp_path, label_studio_url=ls.url, api_key="legacy-token-123")
                with pytest.raises(ImageError) as info:
                    loader.path("s3://bucket/img.png", task_id=5)
        finally:
            close()
        assert info.value.reason == "unreachable"
        assert loader.downloads == 0
        cache = tmp_path / "models" / ".cache" / "images"
        assert [p for p in cache.rglob("*") if p.is_file()] == []

    def test_server_down_is_unreachable(self, tmp_path):
        with LocalServer({}) as gone:
            down = gone.url
        location = f"{down}/img.png?X-Amz-Signature=SECRET"
        with LocalServer({"/tasks/5/presign/": Route(303, b"", location=location)}) as ls:
            loader = _loader(tmp_path, label_studio_url=ls.url, api_key="legacy-token-123")
            with pytest.raises(ImageError) as info:
                loader.path("s3://bucket/img.png", task_id=5)
        assert info.value.reason == "unreachable"
        assert "/img.png" in str(info.value) and "SECRET" not in str(info.value)

    @pytest.mark.parametrize(
        "status, code, reason",
        [(404, "NoSuchKey", "missing"), (403, "AccessDenied", "refused"), (500, "InternalError", "unreachable")],
    )
    def test_bucket_answers_by_status(self, tmp_path, status, code, reason):
        body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>no</Message></Error>".encode()
        with LocalServer({"/img.png": Route(status, body, "application/xml")}) as bucket:
            location = f"{bucket.url}/img.png?X-Amz-Signature=SECRET"
            with LocalServer({"/tasks/5/presign/": Route(303, b"", location=location)}) as ls:
                loader = _loader(tmp_path, label_studio_url=ls.url, api_key="legacy-token-123")
                with pytest.raises(ImageError) as info:
                    loader.path("s3://bucket/img.png", task_id=5)
        assert info.value.reason == reason and f"HTTP {status} from {bucket.netloc}: {code}" in str(info.value)
        assert "SECRET" not in str(info.value)

    @pytest.mark.parametrize(
        "detail, reason",
        [
            (
                "An error occurred (NoSuchKey) when calling the GetObject operation: The specified key does not exist.",
                "missing",
            ),
            ("An error occurred (InvalidAccessKeyId) when calling the GetObject operation", "refused"),
            ('Could not connect to the endpoint URL: "http://127.0.0.1:1/bucket/a.png?x=SECRET"', "unreachable"),
            ("Stream is None", "unreachable"),  # what Label Studio 1.23 says whatever S3's error was
        ],
    )
    def test_label_studio_proxy_failures_by_storage_error(self, tmp_path, detail, reason):
        """Presign off: Label Studio answers 424 with the storage's error in ``detail``."""
        body = json.dumps({"error": "Storage stream failed while proxying data", "detail": detail}).encode()
        with LocalServer({"/tasks/5/presign/": Route(424, body, "application/json")}) as ls:
            loader = _loader(tmp_path, label_studio_url=ls.url, api_key="legacy-token-123")
            with pytest.raises(ImageError) as info:
                loader.path("s3://bucket/a.png", task_id=5)
        assert info.value.reason == reason and "424" in str(info.value)
        assert "SECRET" not in str(info.value)

    def test_a_non_image_object_is_undecodable_and_leaves_the_cache(self, tmp_path):
        with LocalServer({"/tasks/5/presign/": Route(200, b"%PDF-1.4 not an image", "application/pdf")}) as ls:
            loader = _loader(tmp_path, label_studio_url=ls.url, api_key="legacy-token-123")
            for _ in range(2):
                with pytest.raises(ImageError) as info:
                    loader.load("s3://bucket/a.jpg", task_id=5)
                assert info.value.reason == "undecodable"
        assert loader.downloads == 2  # fetched again: the object may have been replaced meanwhile


def _jwt(token_type: str, expires_in: float, **claims) -> str:
    payload = {"token_type": token_type, "exp": int(time.time() + expires_in), **claims}
    return jwt.encode(payload, "a-signing-key-of-at-least-32-bytes!", algorithm="HS256")


class TestLabelStudioAuth:
    @pytest.fixture
    def token_server(self):
        """A Label Studio stand-in for POST /api/token/refresh/ that issues access
        tokens valid for an hour, numbered so that each refresh is visible."""
        issued: list[str] = []

        def refresh(seen):
            if seen.method != "POST" or "refresh" not in json.loads(seen.body or b"{}"):
                return Route(400, b"{}", "application/json")
            issued.append(_jwt("access", 3600, n=len(issued)))
            return Route(200, json.dumps({"access": issued[-1]}).encode(), "application/json")

        with LocalServer({"/api/token/refresh/": refresh}) as server:
            server.issued = issued
            yield server

    def test_legacy_token_is_used_as_is(self, token_server):
        auth = LabelStudioAuth(token_server.url, "0123456789abcdef0123456789abcdef01234567")
        assert auth.access_token() == "0123456789abcdef0123456789abcdef01234567"
        assert auth.headers() == {"Authorization": "Token 0123456789abcdef0123456789abcdef01234567"}
        assert token_server.seen == []

    def test_no_key_no_header(self):
        auth = LabelStudioAuth("http://127.0.0.1:9", "")
        assert auth.access_token() == "" and auth.headers() == {}

    def test_personal_access_token_is_exchanged(self, token_server):
        pat = _jwt("refresh", 86400)
        assert is_personal_access_token(pat) and not is_personal_access_token("abc123")
        auth = LabelStudioAuth(token_server.url + "/", pat)
        token = auth.access_token()
        assert token == token_server.issued[0] and token != pat
        assert auth.headers() == {"Authorization": f"Bearer {token}"}
        assert auth.access_token() == token  # cached while valid
        assert len(token_server.seen) == 1
        seen = token_server.seen[0]
        assert (seen.method, seen.path) == ("POST", "/api/token/refresh/")
        assert pat in seen.body.decode()

    def test_refreshes_again_after_expiry(self, token_server, monkeypatch):
        auth = LabelStudioAuth(token_server.url, _jwt("refresh", 86400))
        first = auth.access_token()
        real_time = time.time

        class Later:
            @staticmethod
            def time() -> float:
                return real_time() + 3600

        monkeypatch.setattr(lsclient, "time", Later)
        second = auth.access_token()
        assert second != first
        assert second == token_server.issued[1]
        assert len(token_server.seen) == 2

    def test_refresh_failure_raises(self):
        with LocalServer({}) as server:  # 404 for the refresh endpoint
            auth = LabelStudioAuth(server.url, _jwt("refresh", 86400))
            with pytest.raises(requests.HTTPError):
                auth.access_token()

    def test_repr_hides_the_key(self):
        pat = _jwt("refresh", 86400)
        assert pat not in repr(LabelStudioAuth("http://ls", pat))


class TestDetectorInput:
    """model/images.py: what training, evaluation and inference feed the detector."""

    @pytest.mark.parametrize("size", [(1, 1), (37, 23), (640, 480)])
    def test_image_tensor_matches_torchvisions_to_tensor(self, size):
        """The faster conversion changes nothing the detector sees."""
        pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        converted = image_tensor(image)
        assert converted.dtype == torch.float32 and converted.shape == (3, size[1], size[0])
        assert torch.equal(converted, to_tensor(image))

    def test_load_image_applies_exif_rotation(self, tmp_path):
        path = write_exif_rotated_jpeg(tmp_path / "r.jpg", 60, 40, orientation=6)
        assert load_image(str(path)).shape == (3, 60, 40)  # stored 60 x 40, shown rotated: H 60, W 40
