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
from operator import itemgetter

from flowtrace.model import Headers

#: Indexes in a Headers tuple of (proto, ip_id, length, icmp_type, icmp_code, icmp_seq,
#: tcp_seq, tcp_ack, tcp_flags, payload_digest): what NAT leaves alone.
NAT_PROOF_FIELDS = tuple(
    Headers._fields.index(name)
    for name in (
        "proto", "ip_id", "length", "icmp_type", "icmp_code", "icmp_seq",
        "tcp_seq", "tcp_ack", "tcp_flags", "payload_digest",
    )
)  # fmt: skip
#: Those fields of a Headers tuple, picked in C: this runs once per frame.
_nat_proof_fields = itemgetter(*NAT_PROOF_FIELDS)


def fingerprint(h: Headers) -> Hashable:
    """A hashable key equal for every sighting of one packet, across NAT."""
    if h.inner is None:
        return _nat_proof_fields(h)
    return (*_nat_proof_fields(h), fingerprint(h.inner))
