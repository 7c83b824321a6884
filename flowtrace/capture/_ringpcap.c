/*
 * flowtrace.capture._ringpcap: TPACKET_V3 ring blocks to pcapng, with no Python per frame.
 *
 * A bulk capture's whole per-frame work is turning each frame of a retired ring block
 * into an Enhanced Packet Block.  In Python that is a struct unpack, a slice and a
 * struct pack per frame (several times tcpdump's CPU per frame); here it is a copy.
 * drain() takes every block the kernel has retired, starting at the caller's next
 * block: it copies the block's frames into EPBs (epb_flags: the direction; an 802.1Q
 * tag the kernel stripped is put back, as ring.py's Python reader does), gives the
 * block back to the kernel, and appends the EPBs with one write(2) per block, with the
 * GIL released.  The Python reader in ring.py/pump.py is the reference and the
 * fallback: tests/unit/capture/test_native.py holds the two byte for byte equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/stat.h>
#include <linux/if_packet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK_EPB 0x00000006u
#define EPB_FLAGS 2u
#define DIRECTION_INBOUND 1u
#define DIRECTION_OUTBOUND 2u
#define ETH_P_8021Q 0x8100u
/* EPB: type, total, interface, ts high, ts low, caplen, orig len (28), data padded to 4,
 * epb_flags (8), opt_endofopt (4), total (4). */
#define EPB_FIXED 44u

static __thread unsigned char *scratch;
static __thread size_t scratch_size;

static unsigned char *scratch_for(size_t size)
{
    if (size > scratch_size) {
        unsigned char *grown = realloc(scratch, size);
        if (grown == NULL)
            return NULL;
        scratch = grown;
        scratch_size = size;
    }
    return scratch;
}

static inline void put32(unsigned char *at, uint32_t value)
{
    memcpy(at, &value, 4); /* pcapng sections flowtrace writes are little-endian, as is x86 */
}

static inline uint32_t pad4(uint32_t n) { return (n + 3u) & ~3u; }

struct frame_view {
    const unsigned char *data;
    uint32_t caplen, wirelen, sec, nsec;
    int vlan, outbound;
    uint16_t tpid, tci;
};

static int frame_at(const unsigned char *ring, size_t ring_size, size_t pos,
                    struct frame_view *out, uint32_t *next)
{
    const struct tpacket3_hdr *hdr;
    const struct sockaddr_ll *sll;
    if (pos + sizeof(struct tpacket3_hdr) > ring_size)
        return -1;
    hdr = (const struct tpacket3_hdr *)(ring + pos);
    if (pos + hdr->tp_mac + (size_t)hdr->tp_snaplen > ring_size)
        return -1;
    sll = (const struct sockaddr_ll *)(ring + pos + TPACKET_ALIGN(sizeof(struct tpacket3_hdr)));
    out->data = ring + pos + hdr->tp_mac;
    out->caplen = hdr->tp_snaplen;
    out->wirelen = hdr->tp_len;
    out->sec = hdr->tp_sec;
    out->nsec = hdr->tp_nsec;
    out->outbound = sll->sll_pkttype == PACKET_OUTGOING;
    out->vlan = (hdr->tp_status & TP_STATUS_VLAN_VALID) != 0;
    out->tpid = (hdr->tp_status & TP_STATUS_VLAN_TPID_VALID) ? hdr->hv1.tp_vlan_tpid
                                                              : ETH_P_8021Q;
    out->tci = (uint16_t)hdr->hv1.tp_vlan_tci;
    *next = hdr->tp_next_offset;
    return 0;
}

static size_t epb_size(const struct frame_view *f)
{
    return EPB_FIXED + pad4(f->caplen + (f->vlan ? 4u : 0u));
}

static unsigned char *write_epb(unsigned char *at, uint32_t interface_id,
                                const struct frame_view *f, uint64_t *wire_bytes)
{
    uint64_t ts = (uint64_t)f->sec * 1000000000ull + f->nsec;
    uint32_t caplen = f->caplen, wirelen = f->wirelen, total;
    if (f->vlan) { /* the tag goes back after the two MAC addresses, as on the wire */
        caplen += 4;
        wirelen += 4;
    }
    total = EPB_FIXED + pad4(caplen);
    put32(at, BLOCK_EPB);
    put32(at + 4, total);
    put32(at + 8, interface_id);
    put32(at + 12, (uint32_t)(ts >> 32));
    put32(at + 16, (uint32_t)ts);
    put32(at + 20, caplen);
    put32(at + 24, wirelen);
    at += 28;
    if (f->vlan) {
        uint32_t head = f->caplen < 12 ? f->caplen : 12;
        memcpy(at, f->data, head);
        at[head] = (unsigned char)(f->tpid >> 8);
        at[head + 1] = (unsigned char)f->tpid;
        at[head + 2] = (unsigned char)(f->tci >> 8);
        at[head + 3] = (unsigned char)f->tci;
        memcpy(at + head + 4, f->data + head, f->caplen - head);
    } else {
        memcpy(at, f->data, f->caplen);
    }
    memset(at + caplen, 0, pad4(caplen) - caplen);
    at += pad4(caplen);
    put32(at, EPB_FLAGS | (4u << 16));
    put32(at + 4, f->outbound ? DIRECTION_OUTBOUND : DIRECTION_INBOUND);
    put32(at + 8, 0); /* opt_endofopt */
    put32(at + 12, total);
    *wire_bytes += wirelen;
    return at + 16;
}

/* The end of the last whole pcapng block within data[0:written]; *blocks counts them. */
static size_t whole_blocks(const unsigned char *data, size_t written, uint64_t *blocks)
{
    size_t at = 0;
    while (at + 8 <= written) {
        uint32_t length;
        memcpy(&length, data + at + 4, 4);
        if (length < 12 || at + (size_t)length > written)
            break;
        at += length;
        (*blocks)++;
    }
    return at;
}

/* Append data (whole blocks) to fd; on a failed write (a full disk) the file is cut back
 * to the end of the last whole block that landed, so a reader never meets a torn one. */
static int write_all(int fd, const unsigned char *data, size_t size, uint64_t *kept_blocks)
{
    size_t written = 0;
    while (written < size) {
        ssize_t done = write(fd, data + written, size - written);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            int code = errno ? errno : EIO;
            size_t kept = whole_blocks(data, written, kept_blocks);
            struct stat st;
            if (written > kept && fstat(fd, &st) == 0 &&
                ftruncate(fd, st.st_size - (off_t)(written - kept)) != 0) {
                /* nothing more to do: the reader stops cleanly at a torn block too */
            }
            return code;
        }
        written += (size_t)done;
    }
    return 0;
}

PyDoc_STRVAR(drain_doc,
"drain(ring, block_size, block_count, next_block, interface_id, fd)\n"
"-> (next_block, blocks, frames, wire_bytes, write_errno, written)\n\n"
"Turn every retired block from next_block on into EPBs for interface_id, give each\n"
"block back to the kernel, and append its EPBs to fd with one write (fd < 0: count\n"
"and give back only). write_errno is the errno of a failed write (then nothing more\n"
"is written; the file is cut back to its last whole block), else 0; written counts\n"
"the frames whose EPB is whole in the file.");

static PyObject *drain(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t block_size, block_count, next_block;
    unsigned int interface_id;
    int fd, write_errno = 0;
    Py_ssize_t blocks = 0;
    unsigned long long frames = 0, wire_bytes = 0;
    uint64_t written = 0; /* frames whose EPB is whole in the file */
    (void)self;

    if (!PyArg_ParseTuple(args, "w*nnnIi", &view, &block_size, &block_count, &next_block,
                          &interface_id, &fd))
        return NULL;
    if (block_size <= 0 || block_count <= 0 || next_block < 0 || next_block >= block_count ||
        block_size * block_count > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "ring geometry does not fit the buffer");
        return NULL;
    }
    unsigned char *ring = view.buf;

    Py_BEGIN_ALLOW_THREADS
    while (blocks < block_count) {
        unsigned char *base = ring + (size_t)next_block * (size_t)block_size;
        struct tpacket_block_desc *desc = (struct tpacket_block_desc *)base;
        struct tpacket_hdr_v1 *h1 = &desc->hdr.bh1;
        uint32_t status = __atomic_load_n(&h1->block_status, __ATOMIC_ACQUIRE);
        if (!(status & TP_STATUS_USER))
            break;
        uint32_t count = h1->num_pkts, i;
        size_t block_end = (size_t)next_block * (size_t)block_size + (size_t)block_size;
        size_t pos = (size_t)next_block * (size_t)block_size + h1->offset_to_first_pkt;
        struct frame_view f;
        uint32_t step = 0;
        /* Each frame's EPB is smaller than its slot in the block (a slot holds a 48-byte
         * tpacket3_hdr and a sockaddr_ll before the frame; an EPB adds 44 bytes and a
         * 4-byte tag at most), so one block's EPBs fit in block_size bytes. */
        unsigned char *out = NULL;
        if (fd >= 0 && write_errno == 0 && count > 0) {
            out = scratch_for((size_t)block_size);
            if (out == NULL)
                write_errno = ENOMEM;
        }
        unsigned char *at = out, *limit = out != NULL ? out + block_size : NULL;
        uint64_t block_bytes = 0, in_out = 0;
        for (i = 0; i < count; i++) {
            if (frame_at(ring, block_end, pos, &f, &step) != 0)
                break; /* a malformed tail (never seen) is left out, not read past */
            if (at != NULL && (size_t)(limit - at) < epb_size(&f)) {
                /* cannot happen (see above); should it, what is ready goes first */
                write_errno = write_all(fd, out, (size_t)(at - out), &written);
                if (write_errno == 0)
                    written += in_out;
                in_out = 0;
                at = write_errno ? NULL : out;
            }
            if (at != NULL) {
                at = write_epb(at, interface_id, &f, &block_bytes);
                in_out++;
            }
            else
                block_bytes += f.wirelen + (f.vlan ? 4u : 0u);
            pos += step;
        }
        count = i;
        __atomic_store_n(&h1->block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        if (at != NULL && at > out) {
            write_errno = write_all(fd, out, (size_t)(at - out), &written);
            if (write_errno == 0)
                written += in_out;
        }
        frames += count;
        wire_bytes += block_bytes;
        blocks++;
        next_block = (next_block + 1) % block_count;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("nnKKiK", next_block, blocks, frames, wire_bytes, write_errno,
                         (unsigned long long)written);
}

static PyMethodDef methods[] = {
    {"drain", drain, METH_VARARGS, drain_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_ringpcap",
    .m_doc = "TPACKET_V3 ring blocks to pcapng EPBs in C (see ring.py for the Python reference).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__ringpcap(void) { return PyModule_Create(&module); }
