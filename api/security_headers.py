"""Security headers on every response, and a Content-Security-Policy for the ops pages.

Every response says ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy:
same-origin`` (nothing to other sites; ``no-referrer`` would make Chromium send ``Origin:
null`` on the page's own forms, which `api.ops_page` refuses as cross-site), and may not be
framed (``frame-ancestors 'none'``, and ``X-Frame-Options: DENY`` for browsers that predate
it): a page that framed ``/ops`` could otherwise get an operator's click inside the frame
(clickjacking), even from the same site, where the ``SameSite`` cookie is sent.

An HTML page may load its script, style and images only from this origin (no inline script
or style at all: the page's are static files), fetch only from here, post forms only
here, and load nothing else. A page that needs a signed-in operator (the ``ops_page``
blueprint) is not stored by the browser or any cache (``Cache-Control: no-store``): dead
letters, owners and errors stay off the disk.
"""

from __future__ import annotations

from flask import Flask, Response, request

API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def install_security_headers(app: Flask, signed_in_blueprints: frozenset[str]) -> None:
    """Add the headers to every response; ``no-store`` to those of ``signed_in_blueprints``."""

    @app.after_request
    def _security_headers(response: Response) -> Response:
        headers = response.headers
        policy = PAGE_POLICY if response.mimetype == "text/html" else API_POLICY
        headers["Content-Security-Policy"] = policy
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "same-origin"
        if request.blueprint in signed_in_blueprints:
            response.cache_control.no_store = True
        return response
