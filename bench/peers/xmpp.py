"""A minimal XMPP client stream over asyncio, just enough for the ejabberd bench.

In-band registration (XEP-0077), SASL PLAIN, resource binding, presence and <message/>
stanzas on plain TCP to 127.0.0.1. It parses the stream with expat (XMLPullParser), so the
load generator spends little CPU per stanza. Not a general client: no TLS, no roster, no
stream management.
"""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import cast
from xml.sax.saxutils import escape

STREAM_NS = "http://etherx.jabber.org/streams"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"
REGISTER_NS = "jabber:iq:register"
CLIENT_NS = "jabber:client"


class XmppError(Exception):
    pass


class Stream:
    """One c2s connection; `element()` returns the next top-level stanza."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, domain: str):
        self.reader = reader
        self.writer = writer
        self.domain = domain
        self._new_parser()

    def _new_parser(self) -> None:
        self.parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root: ET.Element | None = None
        self.ready: list[ET.Element] = []

    @classmethod
    async def connect(cls, host: str, port: int, domain: str) -> Stream:
        reader, writer = await asyncio.open_connection(host, port, limit=2**20)
        stream = cls(reader, writer, domain)
        await stream.restart()
        return stream

    async def restart(self) -> ET.Element:
        """Open (or reopen) the stream; returns <stream:features/>."""
        self._new_parser()
        self.writer.write(
            f"<?xml version='1.0'?><stream:stream to='{self.domain}' xmlns='{CLIENT_NS}' "
            f"xmlns:stream='{STREAM_NS}' version='1.0'>".encode()
        )
        features = await self.element()
        if features.tag != f"{{{STREAM_NS}}}features":
            raise XmppError(f"expected features, got {features.tag}")
        return features

    def send(self, xml: str) -> None:
        self.writer.write(xml.encode())

    async def element(self) -> ET.Element:
        while not self.ready:
            data = await self.reader.read(65536)
            if not data:
                raise XmppError("stream closed by the server")
            self.parser.feed(data)
            # Only "start" and "end" were asked for: every event carries an element.
            events = cast(Iterator[tuple[str, ET.Element]], self.parser.read_events())
            for event, elem in events:
                if event == "start":
                    if self.depth == 0:
                        self.root = elem
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.ready.append(elem)
                        if self.root is not None:
                            self.root.remove(elem)  # keep the parsed tree from growing
                    elif self.depth == 0:
                        raise XmppError("stream ended by the server")
        return self.ready.pop(0)

    async def iq(self, iq_id: str, xml: str) -> ET.Element:
        self.send(xml)
        while True:
            elem = await self.element()
            if elem.tag == f"{{{CLIENT_NS}}}iq" and elem.get("id") == iq_id:
                if elem.get("type") != "result":
                    raise XmppError(ET.tostring(elem).decode())
                return elem

    async def register(self, user: str, password: str) -> None:
        await self.iq(
            "reg",
            f"<iq type='set' id='reg'><query xmlns='{REGISTER_NS}'>"
            f"<username>{escape(user)}</username><password>{escape(password)}</password>"
            "</query></iq>",
        )

    async def login(self, user: str, password: str, resource: str) -> None:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{token}</auth>")
        reply = await self.element()
        if reply.tag != f"{{{SASL_NS}}}success":
            raise XmppError(f"authentication failed: {ET.tostring(reply).decode()}")
        await self.restart()
        await self.iq(
            "bind",
            f"<iq type='set' id='bind'><bind xmlns='{BIND_NS}'>"
            f"<resource>{escape(resource)}</resource></bind></iq>",
        )

    def message(self, to: str, body: str) -> None:
        self.send(f"<message to='{to}' type='chat'><body>{escape(body)}</body></message>")

    async def close(self) -> None:
        try:
            self.send("</stream:stream>")
            await self.writer.drain()
        except ConnectionError:
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def body_text(elem: ET.Element) -> str | None:
    """The <body/> text of a <message/> stanza, if it is one."""
    if elem.tag != f"{{{CLIENT_NS}}}message":
        return None
    body = elem.find(f"{{{CLIENT_NS}}}body")
    return body.text if body is not None else None
