"""HTTP basic auth, as label-studio-ml does it: constant-time comparison of both parts."""

from __future__ import annotations

import hmac

from flask import Request


def check_basic_auth(request: Request, user: str, password: str) -> bool:
    """True when auth is off (no user configured) or the request carries the right pair."""
    if not user:
        return True
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    user_ok = hmac.compare_digest((auth.username or "").encode(), user.encode())
    pass_ok = hmac.compare_digest((auth.password or "").encode(), password.encode())
    return user_ok and pass_ok
