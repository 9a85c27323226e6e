"""The authoritative DNS server of hosts with the `dns` role: the compiled zones over UDP and TCP.

Answers follow RFC 1034 §4.3.2 for authoritative data: the answer with AA set, CNAMEs chased
inside the zone, NXDOMAIN or NODATA with the zone's SOA in the authority section (RFC 2308
§2-3), and the addresses of in-zone MX/NS/CNAME targets as additional data. Names outside every
zone are REFUSED: this is not a recursive resolver. Zone transfers are refused too.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

UDP_LIMIT = 512  # RFC 1035 §4.2.1, without EDNS
_REFUSED_TYPES = {dns.rdatatype.AXFR, dns.rdatatype.IXFR}


def load_zones(files: Iterable[Path]) -> list[dns.zone.Zone]:
    return [
        dns.zone.from_file(str(f), f.name.removesuffix(".zone"), relativize=False) for f in files
    ]


class Authority:
    def __init__(self, zones: Iterable[dns.zone.Zone]) -> None:
        # Longest origin first: the most specific zone answers.
        self.zones = sorted(zones, key=lambda z: len(z.origin or dns.name.root), reverse=True)

    def _zone_for(self, name: dns.name.Name) -> dns.zone.Zone | None:
        return next((z for z in self.zones if z.origin and name.is_subdomain(z.origin)), None)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        question = query.question[0]
        zone = self._zone_for(question.name)
        if (
            question.rdclass != dns.rdataclass.IN
            or zone is None
            or question.rdtype in _REFUSED_TYPES
        ):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        self._resolve(zone, question.name, question.rdtype, response)
        return response

    def _resolve(
        self,
        zone: dns.zone.Zone,
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        response: dns.message.Message,
    ) -> None:
        for _ in range(8):  # a CNAME chain inside the zone, bounded
            node = zone.get_node(name)
            if node is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                self._add_soa(zone, response)
                return
            found = node.get_rdataset(dns.rdataclass.IN, rdtype)
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if found is not None:
                response.answer.append(_rrset(name, found))
                self._add_targets(zone, found, response)
                return
            if cname is None or rdtype == dns.rdatatype.CNAME:
                self._add_soa(zone, response)  # NODATA
                return
            response.answer.append(_rrset(name, cname))
            name = cname[0].target
            if not name.is_subdomain(zone.origin or dns.name.root):
                return

    def _add_soa(self, zone: dns.zone.Zone, response: dns.message.Message) -> None:
        origin = zone.origin or dns.name.root
        soa = zone.get_rdataset(origin, dns.rdatatype.SOA)
        if soa is not None:
            response.authority.append(_rrset(origin, soa))

    def _add_targets(
        self, zone: dns.zone.Zone, rdataset: dns.rdataset.Rdataset, response: dns.message.Message
    ) -> None:
        for rdata in rdataset:
            target = getattr(rdata, "exchange", None) or getattr(rdata, "target", None)
            if isinstance(target, dns.name.Name) and target.is_subdomain(
                zone.origin or dns.name.root
            ):
                addresses = zone.get_rdataset(target, dns.rdatatype.A)
                if addresses is not None:
                    response.additional.append(_rrset(target, addresses))


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


def _reply(authority: Authority, wire: bytes, limit: int | None) -> bytes | None:
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None  # not a DNS message: no answer at all (RFC 1035 §4.1.1 FORMERR needs an id)
    response = authority.answer(query)
    size = max(UDP_LIMIT, query.payload) if limit is not None else 65535
    try:
        return response.to_wire(max_size=size)
    except dns.exception.TooBig:
        # RFC 2181 §9: too big for UDP, so truncated; the client retries over TCP.
        truncated = dns.message.make_response(query)
        truncated.flags |= dns.flags.TC | dns.flags.AA
        return truncated.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: NameServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not derive from DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        reply = _reply(self.server.authority, data, UDP_LIMIT)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class NameServer:
    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on UDP and TCP; with port 0, TCP takes a free port and UDP the same one."""
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._tcp_session, host, port)
        bound = self._tcp.sockets[0].getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(host, bound)
        )
        self._udp = transport
        return host, bound

    async def _tcp_session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # RFC 1035 §4.2.2 / RFC 7766: messages prefixed with a two-octet length.
        try:
            while True:
                (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 30))
                reply = _reply(self.authority, await reader.readexactly(length), None)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
