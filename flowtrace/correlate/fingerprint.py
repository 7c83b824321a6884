"""The identity of one packet, from the fields NAT leaves alone.

Between two observation points a packet can lose a TTL, get new addresses and
ports (SNAT, DNAT, MASQUERADE), a new ICMP echo identifier (MASQUERADE treats it
as a port) and new checksums.  What stays is the IP ID, the protocol, the IP total
length, TCP sequence/acknowledgement/flags, ICMP type/code/sequence and the
payload.  Some kernels send IP ID 0 on DF packets (a SYN-ACK from a listener,
unconnected UDP), so the remaining fields must still tell packets apart.

ICMP errors are NAT'ed along with the packet they quote (the quote's addresses
and ports are rewritten too), so an error is identified by its own NAT-proof
fields plus those of the quote.
"""

from __future__ import annotations

from collections.abc import Hashable

from flowtrace.model import Headers


def fingerprint(h: Headers) -> Hashable:
    """A hashable key equal for every sighting of one packet, across NAT."""
    inner = h.inner
    return (
        h.proto,
        h.ip_id,
        h.length,
        h.icmp_type,
        h.icmp_code,
        h.icmp_seq,
        h.tcp_seq,
        h.tcp_ack,
        h.tcp_flags,
        h.payload_digest,
        None if inner is None else fingerprint(inner),
    )
