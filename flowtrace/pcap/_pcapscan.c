/*
 * flowtrace.pcap._pcapscan: runs of pcapng Enhanced Packet Blocks to Records, in C.
 *
 * The packet loop of PcapngSource.records is the reader's hot path: per block a
 * struct unpack, a slice, an option check and a Record.  scan() does that for every
 * whole, well-formed EPB from `pos` on and stops at the first block it leaves to the
 * Python loop: any other block type, a block not whole in the buffer, a block the
 * Python code would call corrupt or oversized, an empty one (caplen 0, counted there),
 * an interface not described (yet) or with a timestamp unit that does not fit 64 bits,
 * and an opt_comment.  The Python loop handles that one block (and raises what it
 * raises) and calls scan() again.  So the C part holds no rule of its own: the Python
 * loop is the reference and the fallback (FLOWTRACE_NATIVE=0, or no compiler), and
 * tests/unit/pcap/test_pcapscan.py holds the two equal record for record.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define BLOCK_EPB 6u
#define OPT_END 0u
#define OPT_COMMENT 1u
#define EPB_FLAGS 2u
#define EPB_DROPCOUNT 4u
#define EPB_PACKETID 5u
#define PACKET_OUTGOING 4u
#define RECORD_FIELDS 8

/* One interface's conversion, from PcapngSource.conversions. */
struct conversion {
    PyObject *index; /* borrowed from the conversions list, alive for the call */
    int usable;      /* 0: leave its blocks to Python */
    int plain;
    long long multiplier, divisor, offset_ns, direction_at;
};

static inline uint32_t read32(const unsigned char *at, int little)
{
    uint32_t value;
    memcpy(&value, at, 4);
    return little ? value : __builtin_bswap32(value);
}

static inline uint16_t read16(const unsigned char *at, int little)
{
    uint16_t value;
    memcpy(&value, at, 2);
    return little ? value : __builtin_bswap16(value);
}

static inline uint64_t read64(const unsigned char *at, int little)
{
    uint64_t value;
    memcpy(&value, at, 8);
    return little ? value : __builtin_bswap64(value);
}

static int long_of(PyObject *tuple, Py_ssize_t at, long long *out)
{
    int overflow = 0;
    PyObject *item = PyTuple_GET_ITEM(tuple, at);
    long long value = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (value == -1 && PyErr_Occurred())
        return -1;
    *out = value;
    return overflow ? 0 : 1;
}

/* Read conversions[i] = (index, plain, multiplier, divisor, offset ns, direction at, snaplen). */
static int read_conversions(PyObject *list, struct conversion *out, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *tuple = PyList_GET_ITEM(list, i);
        struct conversion *c = &out[i];
        int fits = 1, got;
        if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) < 6) {
            PyErr_SetString(PyExc_TypeError, "scan: a conversion is a tuple of 7");
            return -1;
        }
        c->index = PyTuple_GET_ITEM(tuple, 0);
        c->plain = PyObject_IsTrue(PyTuple_GET_ITEM(tuple, 1));
        if (c->plain < 0)
            return -1;
        if ((got = long_of(tuple, 2, &c->multiplier)) < 0)
            return -1;
        fits &= got;
        if ((got = long_of(tuple, 3, &c->divisor)) < 0)
            return -1;
        fits &= got;
        if ((got = long_of(tuple, 4, &c->offset_ns)) < 0)
            return -1;
        fits &= got;
        if ((got = long_of(tuple, 5, &c->direction_at)) < 0)
            return -1;
        fits &= got;
        c->usable = fits && c->multiplier > 0 && c->divisor > 0;
    }
    return 0;
}

/* time_ns of a raw timestamp as Python computes it (raw * multiplier // divisor +
 * offset), or 0 when it leaves int64: then the block is left to Python. */
static int convert_time(const struct conversion *c, uint64_t raw, long long *out)
{
    unsigned __int128 scaled;
    __int128 value;
    if (c->plain) {
        if (raw > (uint64_t)INT64_MAX)
            return 0;
        *out = (long long)raw;
        return 1;
    }
    /* All three are non-negative here, so C's division is Python's floor division. */
    scaled = (unsigned __int128)raw * (uint64_t)c->multiplier / (uint64_t)c->divisor;
    if (scaled > (unsigned __int128)INT64_MAX)
        return 0;
    value = (__int128)scaled + c->offset_ns;
    if (value > INT64_MAX || value < INT64_MIN)
        return 0;
    *out = (long long)value;
    return 1;
}

/* What an EPB's options say, as PcapngSource._epb_options reads them; 0 when they hold
 * something left to Python (a comment, or options running past the block). */
static int read_options(const unsigned char *at, const unsigned char *end, int little,
                        int *direction, int *has_id, uint64_t *packet_id, int *has_drops,
                        uint64_t *dropcount)
{
    while (at + 4 <= end) {
        uint32_t code = read16(at, little), size = read16(at + 2, little);
        if (code == OPT_END)
            break;
        at += 4;
        if (size > (size_t)(end - at))
            return 0;
        if (code == EPB_FLAGS) {
            if (size == 4)
                *direction = at[little ? 0 : 3] & 3;
        } else if (code == EPB_PACKETID) {
            if (size == 8) {
                *packet_id = read64(at, little);
                *has_id = 1;
            }
        } else if (code == OPT_COMMENT) {
            return 0;
        } else if (code == EPB_DROPCOUNT && size == 8) {
            *dropcount = read64(at, little);
            *has_drops = 1;
        }
        at += (size + 3u) & ~3u;
    }
    return 1;
}

static PyObject *direction_object(int direction)
{
    /* epb_flags bits 0-1: 0 unknown, 1 inbound, 2 outbound, 3 invalid. */
    if (direction == 1)
        Py_RETURN_FALSE;
    if (direction == 2)
        Py_RETURN_TRUE;
    Py_RETURN_NONE;
}

static PyObject *new_record(PyTypeObject *type, PyObject *items[RECORD_FIELDS])
{
    PyObject *record = type->tp_alloc(type, RECORD_FIELDS);
    if (record == NULL) {
        for (int i = 0; i < RECORD_FIELDS; i++)
            Py_XDECREF(items[i]);
        return NULL;
    }
    for (int i = 0; i < RECORD_FIELDS; i++)
        PyTuple_SET_ITEM(record, i, items[i]);
    return record;
}

PyDoc_STRVAR(scan_doc,
"scan(buf, pos, end, little, conversions, max_block, record_type, limit) -> (records, pos)\n\n"
"Records of the whole, well-formed EPBs in buf[pos:end], at most limit of them (each a\n"
"record_type tuple: interface, time_ns, data, orig_len, outbound, packet_id, comment,\n"
"dropcount), and the position of the first block not read: one left to the Python loop,\n"
"or the next after limit records.");

static PyObject *scan(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, end, max_block, limit;
    int little;
    PyObject *conversions, *record_type, *records = NULL;
    struct conversion small[64], *table = small;
    Py_ssize_t count;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnpO!nO!n", &view, &pos, &end, &little, &PyList_Type,
                          &conversions, &max_block, &PyType_Type, &record_type, &limit))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "scan: record_type must be a tuple type");
        goto fail;
    }
    count = PyList_GET_SIZE(conversions);
    if (count > (Py_ssize_t)(sizeof(small) / sizeof(small[0]))) {
        table = PyMem_Malloc(sizeof(struct conversion) * (size_t)count);
        if (table == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
    }
    if (read_conversions(conversions, table, count) < 0)
        goto fail;
    records = PyList_New(0);
    if (records == NULL)
        goto fail;
    {
        const unsigned char *buf = view.buf;
        if (end > view.len) /* the caller's end: its buffer may hold padding past it */
            end = view.len;
        while (pos >= 0 && end - pos >= 28 && PyList_GET_SIZE(records) < limit) {
            const unsigned char *block = buf + pos;
            uint32_t length = read32(block + 4, little);
            uint32_t local_id, caplen, orig_len;
            const unsigned char *data, *options, *block_end;
            const struct conversion *c;
            int direction = 0, has_id = 0, has_drops = 0;
            uint64_t packet_id = 0, dropcount = 0;
            long long time_ns;
            PyObject *items[RECORD_FIELDS], *record;
            if (read32(block, little) != BLOCK_EPB || length < 32 || (length & 3u) ||
                (Py_ssize_t)length > max_block || (Py_ssize_t)length > end - pos)
                break;
            local_id = read32(block + 8, little);
            caplen = read32(block + 20, little);
            orig_len = read32(block + 24, little);
            if (caplen == 0 || local_id >= (uint64_t)count || !table[local_id].usable)
                break;
            c = &table[local_id];
            data = block + 28;
            block_end = block + length - 4;
            if ((size_t)caplen > (size_t)(block_end - data))
                break;
            options = data + ((caplen + 3u) & ~3u);
            if (options > block_end || read32(block_end, little) != length)
                break;
            if (!convert_time(c, ((uint64_t)read32(block + 12, little) << 32) |
                                     read32(block + 16, little), &time_ns))
                break;
            if (!read_options(options, block_end, little, &direction, &has_id, &packet_id,
                              &has_drops, &dropcount))
                break;
            if (direction == 3)
                direction = 0; /* invalid flags: as unknown, the link header may say */
            if (direction == 0 && c->direction_at >= 0 && (long long)caplen > c->direction_at)
                direction = data[c->direction_at] == PACKET_OUTGOING ? 2 : 1;
            Py_INCREF(c->index);
            items[0] = c->index;
            items[1] = PyLong_FromLongLong(time_ns);
            items[2] = PyBytes_FromStringAndSize((const char *)data, caplen);
            items[3] = PyLong_FromUnsignedLong(orig_len);
            items[4] = direction_object(direction);
            items[5] = has_id ? PyLong_FromUnsignedLongLong(packet_id) : Py_NewRef(Py_None);
            items[6] = Py_NewRef(Py_None);
            items[7] = has_drops ? PyLong_FromUnsignedLongLong(dropcount) : Py_NewRef(Py_None);
            if (!items[1] || !items[2] || !items[3] || !items[5] || !items[7]) {
                for (int i = 0; i < RECORD_FIELDS; i++)
                    Py_XDECREF(items[i]);
                goto fail;
            }
            record = new_record((PyTypeObject *)record_type, items);
            if (record == NULL)
                goto fail;
            if (PyList_Append(records, record) < 0) {
                Py_DECREF(record);
                goto fail;
            }
            Py_DECREF(record);
            pos += length;
        }
    }
    if (table != small)
        PyMem_Free(table);
    PyBuffer_Release(&view);
    return Py_BuildValue("Nn", records, pos);
fail:
    Py_XDECREF(records);
    if (table != small)
        PyMem_Free(table);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pcapscan",
    "Runs of pcapng Enhanced Packet Blocks to Records in C (see PcapngSource.records).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pcapscan(void) { return PyModule_Create(&module); }
