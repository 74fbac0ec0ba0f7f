"""What the relay shows everyone without a valid proof: an ordinary web server.

The default page is the stock page of the most common web server, which millions of
hosts serve: the least remarkable thing a scanner can find. Operators can give their
own static page (``--decoy FILE``).
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Final

from samizdat.protocol.relay import RequestHead

__all__ = ["DEFAULT_PAGE", "response", "decoy_response"]

DEFAULT_PAGE: Final = b"""<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href="http://nginx.org/">nginx.org</a>.<br/>
Commercial support is available at
<a href="http://nginx.com/">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
"""

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Not Allowed",
    408: "Request Time-out",
    411: "Length Required",
    413: "Request Entity Too Large",
    421: "Misdirected Request",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
}


def _error_page(status: int) -> bytes:
    title = f"{status} {_REASONS[status]}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


def response(
    status: int, body: bytes | None = None, *, close: bool, head_only: bool = False
) -> bytes:
    """A complete HTTP/1.1 response as a small web server writes it."""
    if body is None:
        body = _error_page(status)
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Server: nginx",
        f"Date: {formatdate(usegmt=True)}",
        "Content-Type: text/html",
        f"Content-Length: {len(body)}",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return out if head_only else out + body


def decoy_response(head: RequestHead, page: bytes, *, close: bool) -> bytes:
    """The site's answer to an ordinary request."""
    if head.method not in ("GET", "HEAD"):
        return response(405, close=close)
    path = head.target.split("?", 1)[0]
    head_only = head.method == "HEAD"
    if path in ("/", "/index.html"):
        return response(200, page, close=close, head_only=head_only)
    return response(404, close=close, head_only=head_only)
