/*
 * flowtrace.correlate._framedecode: decode.py's decode_frame in C for the common frames.
 *
 * `flowtrace analyze` decodes every frame it has not seen the bytes of before; in Python
 * that is a struct unpack per header and a Headers built through tuple.__new__.  Here
 * it is a few loads from the frame and one tuple of the Headers type.  The pure-Python
 * decode_frame in decode.py is the reference: tests/unit/correlate/test_framedecode.py
 * holds the two equal, field by field and type by type, on generated, mutated and cut
 * frames of every link type decode.py knows.
 *
 * C decodes every link type (Ethernet with up to 4 VLAN tags, SLL, SLL2, NULL, LOOP,
 * RAW, IPV4, IPV6), IPv4 (options, fragments, total length 0) and IPv6 (extension
 * headers, fragments), and TCP, UDP, UDP-Lite, SCTP, ICMP and ICMPv6 other than errors.
 * Two rare cases are left to the Python path, which decodes the whole frame again:
 *   - ICMP and ICMPv6 errors (their body quotes the packet they answer: `inner`);
 *   - UDP to VXLAN's port 4789 (an inner Ethernet frame, `outer`).
 * decode() returns NotImplemented for those; decode_frame() calls the Python function
 * init() was given (also for arguments it does not take: keywords, not bytes, a link
 * type that is not an int), so it is a drop-in for decode.py's decode_frame.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define LINKTYPE_NULL 0
#define LINKTYPE_ETHERNET 1
#define LINKTYPE_RAW 101
#define LINKTYPE_LOOP 108
#define LINKTYPE_LINUX_SLL 113
#define LINKTYPE_IPV4 228
#define LINKTYPE_IPV6 229
#define LINKTYPE_LINUX_SLL2 276

#define PAYLOAD_DIGEST_BYTES 16
#define FRAGMENT_DIGEST_BYTES 14
#define VXLAN_PORT 4789
#define MAX_VLAN_TAGS 4
#define MAX_IP6_EXT 8

#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define PROTO_IP6_NO_NEXT 59
#define PROTO_SCTP 132
#define PROTO_UDPLITE 136
#define IP6_FRAGMENT 44
#define IP6_AH 51

/* Headers' fields, in order (flowtrace.model.Headers). */
enum {
    F_VERSION, F_SRC, F_DST, F_PROTO, F_IP_ID, F_TTL, F_LENGTH, F_SPORT, F_DPORT,
    F_ICMP_TYPE, F_ICMP_CODE, F_ICMP_ID, F_ICMP_SEQ, F_TCP_SEQ, F_TCP_ACK, F_TCP_FLAGS,
    F_DIGEST, F_INNER, F_OUTER, N_FIELDS
};

enum outcome { NONE, DECODED, TO_PYTHON };

#define ABSENT (-1) /* an optional field that is None */

struct decoded {
    int version, addr_len;
    const unsigned char *src, *dst;
    long proto, ttl, length;
    long long ip_id;
    long sport, dport, icmp_type, icmp_code, icmp_id, icmp_seq, tcp_flags;
    long long tcp_seq, tcp_ack;
    long fragment_offset; /* ABSENT, or the digest starts with it (2 bytes) */
    const unsigned char *digest;
    Py_ssize_t digest_len;
};

static PyTypeObject *headers_type; /* flowtrace.model.Headers, from init() */
static PyObject *python_decode;    /* decode.py's Python decode_frame, from init() */

static inline unsigned be16(const unsigned char *at) { return ((unsigned)at[0] << 8) | at[1]; }

static inline unsigned long be32(const unsigned char *at)
{
    return ((unsigned long)at[0] << 24) | ((unsigned long)at[1] << 16) |
           ((unsigned long)at[2] << 8) | at[3];
}

static inline size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

static void absent_transport(struct decoded *h)
{
    h->sport = h->dport = h->icmp_type = h->icmp_code = h->icmp_id = h->icmp_seq = ABSENT;
    h->tcp_flags = ABSENT;
    h->tcp_seq = h->tcp_ack = ABSENT;
    h->fragment_offset = ABSENT;
    h->digest = NULL;
    h->digest_len = 0;
}

/* The transport payload's digest: d[body : min(end, body + 16)], as Python slices it. */
static void digest_from(struct decoded *h, const unsigned char *d, size_t body, size_t end)
{
    h->digest = d;
    h->digest_len = 0;
    if (end > body) {
        h->digest = d + body;
        h->digest_len = (Py_ssize_t)min_size(end - body, PAYLOAD_DIGEST_BYTES);
    }
}

/* A fragment other than the first: its offset, then d[start : start + 14]. */
static void fragment_digest(struct decoded *h, const unsigned char *d, size_t start, size_t size,
                            long offset)
{
    h->fragment_offset = offset;
    h->digest = d;
    h->digest_len = 0;
    if (size > start) {
        h->digest = d + start;
        h->digest_len = (Py_ssize_t)min_size(size - start, FRAGMENT_DIGEST_BYTES);
    }
}

static int icmp_echo(long proto, unsigned type)
{
    if (proto == PROTO_ICMP)
        return type == 0 || type == 8 || (type >= 13 && type <= 18);
    return type == 128 || type == 129;
}

static int icmp_error(long proto, unsigned type)
{
    if (proto == PROTO_ICMP)
        return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
    return type >= 1 && type <= 4;
}

/* decode.py's _transport with quoted=False; start <= size, end <= size. */
static enum outcome transport(const unsigned char *d, size_t start, size_t end,
                              struct decoded *h)
{
    size_t body = start;
    int has_bytes = end >= start;
    size_t available = has_bytes ? end - start : 0;
    long proto = h->proto;
    if (proto == PROTO_TCP) {
        if (!has_bytes || available < 14)
            return NONE;
        unsigned data_offset = d[start + 12];
        if (data_offset < 0x50)
            return NONE; /* a TCP header is at least 5 words */
        h->sport = be16(d + start);
        h->dport = be16(d + start + 2);
        h->tcp_seq = be32(d + start + 4);
        h->tcp_ack = be32(d + start + 8);
        h->tcp_flags = d[start + 13] | ((data_offset & 1u) << 8); /* the NS bit */
        body = start + (data_offset >> 4) * 4;
    }
    else if (proto == PROTO_UDP || proto == PROTO_UDPLITE || proto == PROTO_SCTP) {
        if (!has_bytes || available < 8)
            return NONE;
        h->sport = be16(d + start);
        h->dport = be16(d + start + 2);
        body = start + (proto == PROTO_SCTP ? 12 : 8);
        if (proto == PROTO_UDP && h->dport == VXLAN_PORT)
            return TO_PYTHON; /* perhaps VXLAN: decode.py's _vxlan */
    }
    else if (proto == PROTO_ICMP || proto == PROTO_ICMPV6) {
        if (!has_bytes || available < 8)
            return NONE;
        unsigned type = d[start];
        if (icmp_error(proto, type))
            return TO_PYTHON; /* quotes a packet: decode.py's _quoted_packet */
        h->icmp_type = type;
        h->icmp_code = d[start + 1];
        if (icmp_echo(proto, type)) {
            h->icmp_id = be16(d + start + 4);
            h->icmp_seq = be16(d + start + 6);
        }
        body = start + 8;
    }
    digest_from(h, d, body, end);
    return DECODED;
}

/* decode.py's _ipv4 with quoted=False. */
static enum outcome ipv4(const unsigned char *d, size_t off, size_t size, struct decoded *h)
{
    if (off > size || size - off < 20)
        return NONE;
    unsigned version_ihl = d[off];
    size_t header_len = (version_ihl & 0x0Fu) * 4;
    if (version_ihl >> 4 != 4 || header_len < 20)
        return NONE;
    size_t start = off + header_len;
    if (start > size)
        return NONE;
    unsigned total = be16(d + off + 2);
    size_t end = size;
    if (total != 0) { /* total 0: a segmentation-offloaded super-packet */
        if (total < header_len)
            return NONE;
        end = min_size(off + total, size);
    }
    h->version = 4;
    h->addr_len = 4;
    h->src = d + off + 12;
    h->dst = d + off + 16;
    h->proto = d[off + 9];
    h->ip_id = be16(d + off + 4);
    h->ttl = d[off + 8];
    h->length = total;
    absent_transport(h);
    unsigned fragment = be16(d + off + 6) & 0x1FFFu;
    if (fragment) { /* not the first fragment: no transport header */
        fragment_digest(h, d, start, size, (long)fragment);
        return DECODED;
    }
    return transport(d, start, end, h);
}

static int ip6_ext_opts(unsigned next_header)
{
    return next_header == 0 || next_header == 43 || next_header == 60 || next_header == 135 ||
           next_header == 139 || next_header == 140;
}

/* decode.py's _ipv6 with quoted=False. */
static enum outcome ipv6(const unsigned char *d, size_t off, size_t size, struct decoded *h)
{
    if (off > size || size - off < 40)
        return NONE;
    if (d[off] >> 4 != 6)
        return NONE;
    unsigned payload_len = be16(d + off + 4);
    unsigned next_header = d[off + 6];
    size_t start = off + 40;
    /* payload length 0: a jumbogram or an offloaded super-packet; the frame ends it. */
    size_t end = payload_len == 0 ? size : min_size(start + payload_len, size);
    h->version = 6;
    h->addr_len = 16;
    h->src = d + off + 8;
    h->dst = d + off + 24;
    h->ttl = d[off + 7];
    h->length = (long)payload_len + 40;
    h->ip_id = 0;
    absent_transport(h);
    for (int i = 0; i < MAX_IP6_EXT; i++) {
        if (ip6_ext_opts(next_header)) {
            if (start + 1 >= size)
                return NONE;
            next_header = d[start];
            start += ((size_t)d[start + 1] + 1) * 8;
        }
        else if (next_header == IP6_AH) {
            if (start + 1 >= size)
                return NONE;
            next_header = d[start];
            start += ((size_t)d[start + 1] + 2) * 4;
        }
        else if (next_header == IP6_FRAGMENT) {
            if (start + 8 > size)
                return NONE;
            unsigned offset_flags = be16(d + start + 2);
            next_header = d[start];
            h->ip_id = (long long)be32(d + start + 4);
            start += 8;
            if (offset_flags >> 3) { /* not the first fragment: no transport header */
                h->proto = next_header;
                fragment_digest(h, d, start, size, (long)(offset_flags >> 3));
                return DECODED;
            }
        }
        else
            break;
    }
    if (start > size)
        return NONE;
    h->proto = next_header;
    if (next_header == PROTO_IP6_NO_NEXT) {
        h->digest = d;
        h->digest_len = 0;
        return DECODED;
    }
    return transport(d, start, end, h);
}

/* decode.py's _decode (and decode_frame's Ethernet shortcut, which it equals). */
static enum outcome decode_linktype(const unsigned char *d, size_t size, long linktype,
                                    struct decoded *h)
{
    unsigned ethertype;
    size_t offset;
    switch (linktype) {
    case LINKTYPE_ETHERNET:
        if (size < 14)
            return NONE;
        ethertype = be16(d + 12);
        offset = 14;
        break;
    case LINKTYPE_LINUX_SLL:
        if (size < 16)
            return NONE;
        ethertype = be16(d + 14);
        offset = 16;
        break;
    case LINKTYPE_LINUX_SLL2:
        if (size < 20)
            return NONE;
        ethertype = be16(d);
        offset = 20;
        break;
    case LINKTYPE_RAW:
    case LINKTYPE_IPV4:
    case LINKTYPE_IPV6:
        if (size < 1)
            return NONE;
        if (d[0] >> 4 == 4)
            return ipv4(d, 0, size, h);
        if (d[0] >> 4 == 6)
            return ipv6(d, 0, size, h);
        return NONE;
    case LINKTYPE_NULL:
    case LINKTYPE_LOOP: {
        if (size < 4)
            return NONE;
        unsigned long family = be32(d);
        if (family > 0xFFFF) /* written in little-endian host order */
            family = ((unsigned long)d[3] << 24) | ((unsigned long)d[2] << 16) |
                     ((unsigned long)d[1] << 8) | d[0];
        if (family == 2)
            return ipv4(d, 4, size, h);
        if (family == 10 || family == 24 || family == 28 || family == 30)
            return ipv6(d, 4, size, h);
        return NONE;
    }
    default:
        return NONE;
    }
    for (int tags = 0;
         (ethertype == 0x8100 || ethertype == 0x88A8 || ethertype == 0x9100) && tags < MAX_VLAN_TAGS;
         tags++) {
        if (offset + 3 >= size)
            return NONE;
        ethertype = be16(d + offset + 2);
        offset += 4;
    }
    if (ethertype == 0x0800)
        return ipv4(d, offset, size, h);
    if (ethertype == 0x86DD)
        return ipv6(d, offset, size, h);
    return NONE;
}

/* Address text, as socket.inet_ntop writes it, from a bounded direct-mapped cache. */
#define CACHE_BITS 16
struct cached_address {
    PyObject *text;
    int len;
    unsigned char raw[16];
};
static struct cached_address address_cache[1u << CACHE_BITS];

static PyObject *address(const unsigned char *raw, int len)
{
    uint32_t words[4], hash;
    if (len == 4) {
        memcpy(words, raw, 4);
        hash = words[0] * 0x9E3779B1u;
    }
    else {
        memcpy(words, raw, 16);
        hash = (words[0] ^ (words[1] * 0x85EBCA6Bu) ^ (words[2] * 0xC2B2AE35u) ^ words[3]) *
               0x9E3779B1u;
    }
    struct cached_address *slot = &address_cache[hash >> (32 - CACHE_BITS)];
    if (slot->text != NULL && slot->len == len && memcmp(slot->raw, raw, (size_t)len) == 0)
        return Py_NewRef(slot->text);
    char buf[INET6_ADDRSTRLEN];
    if (inet_ntop(len == 4 ? AF_INET : AF_INET6, raw, buf, sizeof buf) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *text = PyUnicode_FromString(buf);
    if (text == NULL)
        return NULL;
    Py_XSETREF(slot->text, Py_NewRef(text));
    slot->len = len;
    memcpy(slot->raw, raw, (size_t)len);
    return text;
}

static PyObject *optional(long value)
{
    return value == ABSENT ? Py_NewRef(Py_None) : PyLong_FromLong(value);
}

static PyObject *optional_long_long(long long value)
{
    return value == ABSENT ? Py_NewRef(Py_None) : PyLong_FromLongLong(value);
}

static PyObject *digest_bytes(const struct decoded *h)
{
    if (h->fragment_offset == ABSENT)
        return PyBytes_FromStringAndSize((const char *)h->digest, h->digest_len);
    PyObject *digest = PyBytes_FromStringAndSize(NULL, 2 + h->digest_len);
    if (digest == NULL)
        return NULL;
    char *at = PyBytes_AS_STRING(digest);
    at[0] = (char)(h->fragment_offset >> 8);
    at[1] = (char)(h->fragment_offset & 0xFF);
    if (h->digest_len)
        memcpy(at + 2, h->digest, (size_t)h->digest_len);
    return digest;
}

/* A Headers from its fields (references stolen, even on failure). */
static PyObject *new_headers(PyObject **items)
{
#if PY_VERSION_HEX < 0x030E0000
    /* What tuple.__new__(Headers, t) does (tuple_subtype_new), without the plain tuple. */
    PyObject *headers = headers_type->tp_alloc(headers_type, N_FIELDS);
    if (headers == NULL) {
        for (int i = 0; i < N_FIELDS; i++)
            Py_DECREF(items[i]);
        return NULL;
    }
    for (int i = 0; i < N_FIELDS; i++)
        PyTuple_SET_ITEM(headers, i, items[i]);
    return headers;
#else
    /* 3.14 caches a tuple's hash in the object: let tuple.__new__ set that up. */
    PyObject *plain = PyTuple_New(N_FIELDS);
    if (plain == NULL) {
        for (int i = 0; i < N_FIELDS; i++)
            Py_DECREF(items[i]);
        return NULL;
    }
    for (int i = 0; i < N_FIELDS; i++)
        PyTuple_SET_ITEM(plain, i, items[i]);
    PyObject *args = PyTuple_Pack(1, plain);
    Py_DECREF(plain);
    if (args == NULL)
        return NULL;
    PyObject *headers = PyTuple_Type.tp_new(headers_type, args, NULL);
    Py_DECREF(args);
    return headers;
#endif
}

static PyObject *build(const struct decoded *h)
{
    PyObject *items[N_FIELDS];
    items[F_VERSION] = PyLong_FromLong(h->version);
    items[F_SRC] = address(h->src, h->addr_len);
    items[F_DST] = address(h->dst, h->addr_len);
    items[F_PROTO] = PyLong_FromLong(h->proto);
    items[F_IP_ID] = PyLong_FromLongLong(h->ip_id);
    items[F_TTL] = PyLong_FromLong(h->ttl);
    items[F_LENGTH] = PyLong_FromLong(h->length);
    items[F_SPORT] = optional(h->sport);
    items[F_DPORT] = optional(h->dport);
    items[F_ICMP_TYPE] = optional(h->icmp_type);
    items[F_ICMP_CODE] = optional(h->icmp_code);
    items[F_ICMP_ID] = optional(h->icmp_id);
    items[F_ICMP_SEQ] = optional(h->icmp_seq);
    items[F_TCP_SEQ] = optional_long_long(h->tcp_seq);
    items[F_TCP_ACK] = optional_long_long(h->tcp_ack);
    items[F_TCP_FLAGS] = optional(h->tcp_flags);
    items[F_DIGEST] = digest_bytes(h);
    items[F_INNER] = Py_NewRef(Py_None);
    items[F_OUTER] = Py_NewRef(Py_None);
    int failed = 0;
    for (int i = 0; i < N_FIELDS; i++)
        failed |= items[i] == NULL;
    if (failed) {
        for (int i = 0; i < N_FIELDS; i++)
            Py_XDECREF(items[i]);
        return NULL;
    }
    return new_headers(items);
}

/* Headers, None, or NotImplemented (TO_PYTHON); NULL with an exception set. */
static PyObject *decode_bytes(PyObject *data, PyObject *linktype_obj)
{
    int overflow = 0;
    long linktype = PyLong_AsLongAndOverflow(linktype_obj, &overflow);
    if (linktype == -1 && PyErr_Occurred())
        return NULL;
    if (overflow)
        Py_RETURN_NONE; /* no link type decode.py knows */
    struct decoded h;
    switch (decode_linktype((const unsigned char *)PyBytes_AS_STRING(data),
                            (size_t)PyBytes_GET_SIZE(data), linktype, &h)) {
    case DECODED:
        return build(&h);
    case TO_PYTHON:
        Py_RETURN_NOTIMPLEMENTED;
    default:
        Py_RETURN_NONE;
    }
}

static int ready(void)
{
    if (headers_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_framedecode.init(Headers, decode) was not called");
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(decode_doc,
"decode(data: bytes, linktype: int) -> Headers | None | NotImplemented\n\n"
"decode.py's decode_frame of a frame, or NotImplemented for the frames C leaves to\n"
"Python (ICMP errors, UDP to port 4789).");

static PyObject *decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decode() takes exactly 2 arguments (data, linktype)");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "decode() takes bytes and an int");
        return NULL;
    }
    if (!ready())
        return NULL;
    return decode_bytes(args[0], args[1]);
}

PyDoc_STRVAR(decode_frame_doc,
"decode_frame(data, linktype=1) -> Headers | None\n\n"
"The IP and transport headers of one captured frame, or None if it has none: decode.py's\n"
"decode_frame, in C but for the frames (and arguments) it hands to the Python one.");

static PyObject *decode_frame(PyObject *self, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames)
{
    (void)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (!ready())
        return NULL;
    if (kwnames != NULL || nargs < 1 || nargs > 2 || (nargs == 2 && !PyLong_CheckExact(args[1])))
        return PyObject_Vectorcall(python_decode, args, nargsf, kwnames);
    PyObject *linktype = nargs == 2 ? args[1] : NULL;
    PyObject *data = args[0];
    PyObject *copy = NULL;
    if (!PyBytes_CheckExact(data)) {
        if (!PyObject_CheckBuffer(data))
            return PyObject_Vectorcall(python_decode, args, nargsf, NULL);
        copy = PyBytes_FromObject(data); /* what decode.py's bytes(data) does */
        if (copy == NULL)
            return NULL;
        data = copy;
    }
    PyObject *ethernet = NULL;
    if (linktype == NULL) {
        ethernet = PyLong_FromLong(LINKTYPE_ETHERNET);
        if (ethernet == NULL) {
            Py_XDECREF(copy);
            return NULL;
        }
        linktype = ethernet;
    }
    PyObject *result = decode_bytes(data, linktype);
    if (result == Py_NotImplemented) {
        Py_DECREF(result);
        PyObject *call[2] = {data, linktype};
        result = PyObject_Vectorcall(python_decode, call, 2, NULL);
    }
    Py_XDECREF(ethernet);
    Py_XDECREF(copy);
    return result;
}

PyDoc_STRVAR(init_doc,
"init(headers_type, python_decode_frame) -> None\n\n"
"The Headers named tuple to build, and the Python decode_frame for the frames C leaves\n"
"to it.  decode.py calls it once, at import.");

static PyObject *init(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "init() takes exactly 2 arguments");
        return NULL;
    }
    PyObject *type = args[0];
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type) ||
        !PyType_IS_GC((PyTypeObject *)type)) {
        PyErr_SetString(PyExc_TypeError, "init() needs a named tuple type");
        return NULL;
    }
    if (((PyTypeObject *)type)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "init() needs a named tuple type without extra slots");
        return NULL;
    }
    PyObject *fields = PyObject_GetAttrString(type, "_fields");
    if (fields == NULL)
        return NULL;
    Py_ssize_t count = PyObject_Length(fields);
    Py_DECREF(fields);
    if (count < 0)
        return NULL;
    if (count != N_FIELDS) {
        PyErr_Format(PyExc_TypeError, "init() needs a named tuple of %d fields, not %zd",
                     N_FIELDS, count);
        return NULL;
    }
    if (!PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "init() needs the Python decode_frame");
        return NULL;
    }
    Py_XSETREF(headers_type, (PyTypeObject *)Py_NewRef(type));
    Py_XSETREF(python_decode, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"init", (PyCFunction)(void (*)(void))init, METH_FASTCALL, init_doc},
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL, decode_doc},
    {"decode_frame", (PyCFunction)(void (*)(void))decode_frame, METH_FASTCALL | METH_KEYWORDS,
     decode_frame_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_framedecode",
    .m_doc = "decode.py's decode_frame in C for the common frames (decode.py is the reference; "
             "ICMP errors and UDP to port 4789 are left to it).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__framedecode(void) { return PyModule_Create(&module); }
