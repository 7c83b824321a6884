/*
 * flowtrace.correlate._grouper: the correlator's per-sighting work, in C.
 *
 * Correlator (match.py) does two things per sighting: it passes it through a reorder
 * buffer (each point's sightings in a run in time order, the runs merged through a
 * heap of their heads, the rare older sighting in a heap of its own), and it puts it
 * into the open packet with the same fingerprint, closing packets that are complete
 * or older than the window.  That is a few dict and heap operations per sighting,
 * and in Python it was a fifth of `flowtrace analyze`.  Grouper does exactly what
 * match._Grouper does, step for step (the same heap keys, the same tie-breaks), and
 * hands back each closed packet as the list of its sightings in arrival order; the
 * Correlator orders them and names direction and NAT in Python.  The rare second
 * sighting of a packet at one point is judged by match._seen_again itself, and a
 * fingerprint of a packet quoting another (an ICMP error) by match.fingerprint.
 * tests/unit/correlate/test_grouper.py holds the two equal on generated streams.
 *
 * Times are int64 ns (until 2262); a time beyond raises OverflowError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#define NAT_PROOF_FIELDS 10

/* --- a packet still collecting sightings ---------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *key;
    PyObject *sightings; /* list, arrival order */
    int64_t first_ns;
    int complete;
    /* The first sighting at each point (borrowed: sightings holds them), and whether the
     * point saw it a second time. */
    Py_ssize_t points, capacity;
    PyObject **at_point, **at_sighting;
    char *twice;
} Building;

static void building_dealloc(Building *self)
{
    Py_XDECREF(self->key);
    Py_XDECREF(self->sightings);
    PyMem_Free(self->at_point);
    PyMem_Free(self->at_sighting);
    PyMem_Free(self->twice);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject BuildingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flowtrace.correlate._grouper.Building",
    .tp_basicsize = sizeof(Building),
    .tp_dealloc = (destructor)building_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A packet still collecting sightings (internal).",
};

static int building_remember(Building *b, PyObject *point, PyObject *sighting)
{
    if (b->points == b->capacity) {
        Py_ssize_t grown = b->capacity ? 2 * b->capacity : 8;
        PyObject **points = PyMem_Realloc(b->at_point, sizeof(PyObject *) * (size_t)grown);
        if (points == NULL)
            return -1;
        b->at_point = points;
        PyObject **sightings = PyMem_Realloc(b->at_sighting, sizeof(PyObject *) * (size_t)grown);
        if (sightings == NULL)
            return -1;
        b->at_sighting = sightings;
        char *twice = PyMem_Realloc(b->twice, (size_t)grown);
        if (twice == NULL)
            return -1;
        b->twice = twice;
        b->capacity = grown;
    }
    b->at_point[b->points] = point;
    b->at_sighting[b->points] = sighting;
    b->twice[b->points] = 0;
    b->points++;
    return 0;
}

/* -1 error, else the index of point among b's points, or b->points when absent. */
static Py_ssize_t building_find(Building *b, PyObject *point)
{
    for (Py_ssize_t i = 0; i < b->points; i++) {
        if (b->at_point[i] == point)
            return i;
    }
    for (Py_ssize_t i = 0; i < b->points; i++) {
        int same = PyObject_RichCompareBool(b->at_point[i], point, Py_EQ);
        if (same < 0)
            return -1;
        if (same)
            return i;
    }
    return b->points;
}

static Building *building_new(PyObject *key, PyObject *sighting, PyObject *point, int64_t t)
{
    Building *b = PyObject_New(Building, &BuildingType);
    if (b == NULL)
        return NULL;
    b->key = Py_NewRef(key);
    b->first_ns = t;
    b->complete = 0;
    b->points = b->capacity = 0;
    b->at_point = b->at_sighting = NULL;
    b->twice = NULL;
    b->sightings = PyList_New(1);
    if (b->sightings == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    PyList_SET_ITEM(b->sightings, 0, Py_NewRef(sighting));
    if (building_remember(b, point, sighting) < 0) {
        Py_DECREF(b);
        PyErr_NoMemory();
        return NULL;
    }
    return b;
}

/* --- the grouper ------------------------------------------------------------------ */

typedef struct {
    PyObject **items;
    int64_t *times;
    Py_ssize_t first, length, capacity;
} Run;

typedef struct {
    int64_t t, seq;
    Py_ssize_t run; /* heads: index of the run */
    PyObject *sighting; /* late: the sighting (owned) */
} Entry;

typedef struct {
    Entry *items;
    Py_ssize_t length, capacity;
} Heap;

typedef struct {
    PyObject_HEAD
    int64_t window_ns, max_hold_ns, hold_ns, arrivals, newest_ns;
    int has_newest;
    Py_ssize_t complete_at;
    PyObject *run_of_point; /* dict: point -> index into runs */
    Run *runs;
    Py_ssize_t run_count, run_capacity;
    Heap heads, late;
    Building **open; /* ring buffer, by first sighting */
    Py_ssize_t open_first, open_length, open_capacity;
    PyObject *latest; /* dict: fingerprint -> newest open Building with it */
    PyObject *fingerprint, *seen_again;
    Py_ssize_t fields[NAT_PROOF_FIELDS], inner_field;
} Grouper;

static inline int entry_less(const Entry *a, const Entry *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static void heap_sift_down(Heap *h, Py_ssize_t at)
{
    Entry moving = h->items[at];
    for (;;) {
        Py_ssize_t child = 2 * at + 1;
        if (child >= h->length)
            break;
        if (child + 1 < h->length && entry_less(&h->items[child + 1], &h->items[child]))
            child++;
        if (!entry_less(&h->items[child], &moving))
            break;
        h->items[at] = h->items[child];
        at = child;
    }
    h->items[at] = moving;
}

static int heap_push(Heap *h, Entry entry)
{
    Py_ssize_t at;
    if (h->length == h->capacity) {
        Py_ssize_t grown = h->capacity ? 2 * h->capacity : 16;
        Entry *items = PyMem_Realloc(h->items, sizeof(Entry) * (size_t)grown);
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        h->items = items;
        h->capacity = grown;
    }
    at = h->length++;
    while (at > 0) {
        Py_ssize_t parent = (at - 1) / 2;
        if (!entry_less(&entry, &h->items[parent]))
            break;
        h->items[at] = h->items[parent];
        at = parent;
    }
    h->items[at] = entry;
    return 0;
}

static Entry heap_pop(Heap *h)
{
    Entry top = h->items[0];
    h->length--;
    if (h->length > 0) {
        h->items[0] = h->items[h->length];
        heap_sift_down(h, 0);
    }
    return top;
}

static void heap_replace_top(Heap *h, Entry entry)
{
    h->items[0] = entry;
    heap_sift_down(h, 0);
}

static int run_append(Run *run, PyObject *sighting, int64_t t)
{
    if (run->length == run->capacity) {
        Py_ssize_t grown = run->capacity ? 2 * run->capacity : 64;
        PyObject **items = PyMem_Malloc(sizeof(PyObject *) * (size_t)grown);
        int64_t *times = PyMem_Malloc(sizeof(int64_t) * (size_t)grown);
        if (items == NULL || times == NULL) {
            PyMem_Free(items);
            PyMem_Free(times);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < run->length; i++) {
            Py_ssize_t from = (run->first + i) % run->capacity;
            items[i] = run->items[from];
            times[i] = run->times[from];
        }
        PyMem_Free(run->items);
        PyMem_Free(run->times);
        run->items = items;
        run->times = times;
        run->first = 0;
        run->capacity = grown;
    }
    Py_ssize_t at = (run->first + run->length) % run->capacity;
    run->items[at] = Py_NewRef(sighting);
    run->times[at] = t;
    run->length++;
    return 0;
}

static inline int64_t run_last_time(const Run *run)
{
    return run->times[(run->first + run->length - 1) % run->capacity];
}

static inline int64_t run_first_time(const Run *run) { return run->times[run->first]; }

/* Take the run's first sighting (a new reference). */
static PyObject *run_pop_first(Run *run)
{
    PyObject *sighting = run->items[run->first];
    run->first = (run->first + 1) % run->capacity;
    run->length--;
    return sighting;
}

static int time_of(PyObject *sighting, int64_t *out)
{
    int overflow = 0;
    long long t = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(sighting, 1), &overflow);
    if (t == -1 && PyErr_Occurred())
        return -1;
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError,
                        "a sighting's time_ns does not fit in 64 bits (beyond the year 2262)");
        return -1;
    }
    *out = t;
    return 0;
}

static int check_sighting(PyObject *s)
{
    if (!PyTuple_Check(s) || PyTuple_GET_SIZE(s) < 3 || !PyTuple_Check(PyTuple_GET_ITEM(s, 2))) {
        PyErr_SetString(PyExc_TypeError, "Grouper takes Sightings (point, time_ns, headers, ...)");
        return -1;
    }
    return 0;
}

static PyObject *fingerprint_of(Grouper *g, PyObject *headers)
{
    Py_ssize_t size = PyTuple_GET_SIZE(headers);
    if (g->inner_field >= size)
        goto general;
    if (PyTuple_GET_ITEM(headers, g->inner_field) != Py_None)
        goto general;
    PyObject *key = PyTuple_New(NAT_PROOF_FIELDS);
    if (key == NULL)
        return NULL;
    for (int i = 0; i < NAT_PROOF_FIELDS; i++) {
        if (g->fields[i] >= size) {
            Py_DECREF(key);
            goto general;
        }
        PyTuple_SET_ITEM(key, i, Py_NewRef(PyTuple_GET_ITEM(headers, g->fields[i])));
    }
    return key;
general:
    return PyObject_CallOneArg(g->fingerprint, headers);
}

static int open_append(Grouper *g, Building *b)
{
    if (g->open_length == g->open_capacity) {
        Py_ssize_t grown = g->open_capacity ? 2 * g->open_capacity : 256;
        Building **items = PyMem_Malloc(sizeof(Building *) * (size_t)grown);
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < g->open_length; i++)
            items[i] = g->open[(g->open_first + i) % g->open_capacity];
        PyMem_Free(g->open);
        g->open = items;
        g->open_first = 0;
        g->open_capacity = grown;
    }
    g->open[(g->open_first + g->open_length) % g->open_capacity] = (Building *)Py_NewRef(b);
    g->open_length++;
    return 0;
}

/* Close the oldest open packet: append its sightings to done, forget it as latest. */
static int emit_oldest(Grouper *g, PyObject *done)
{
    Building *b = g->open[g->open_first];
    int failed = 0;
    g->open_first = (g->open_first + 1) % g->open_capacity;
    g->open_length--;
    PyObject *latest = PyDict_GetItemWithError(g->latest, b->key);
    if (latest == (PyObject *)b) {
        if (PyDict_DelItem(g->latest, b->key) < 0)
            failed = 1;
    } else if (latest == NULL && PyErr_Occurred()) {
        failed = 1;
    }
    if (!failed && PyList_Append(done, b->sightings) < 0)
        failed = 1;
    Py_DECREF(b);
    return failed ? -1 : 0;
}

/* 1 if b took s as another sighting of its packet, 0 if s starts a new packet. */
static int building_take(Grouper *g, Building *b, PyObject *s, PyObject *point)
{
    Py_ssize_t at = building_find(b, point);
    if (at < 0)
        return -1;
    if (at == b->points) {
        if (building_remember(b, point, s) < 0) {
            PyErr_NoMemory();
            return -1;
        }
    } else {
        if (b->twice[at])
            return 0;
        PyObject *again = PyObject_CallFunctionObjArgs(g->seen_again, b->at_sighting[at], s, NULL);
        if (again == NULL)
            return -1;
        int yes = PyObject_IsTrue(again);
        Py_DECREF(again);
        if (yes <= 0)
            return yes;
        b->twice[at] = 1;
    }
    return PyList_Append(b->sightings, s) < 0 ? -1 : 1;
}

/* Put one sighting (in time order) into its packet; s is a new reference, consumed. */
static int place(Grouper *g, PyObject *s, int64_t t, PyObject *done)
{
    int result = -1;
    PyObject *key = NULL;
    Building *b;
    if (g->open_length) {
        __int128 oldest_open = (__int128)t - g->window_ns;
        while (g->open_length) {
            Building *first = g->open[g->open_first];
            if (!(first->complete || (__int128)first->first_ns < oldest_open))
                break;
            if (emit_oldest(g, done) < 0)
                goto out;
        }
    }
    PyObject *point = PyTuple_GET_ITEM(s, 0);
    key = fingerprint_of(g, PyTuple_GET_ITEM(s, 2));
    if (key == NULL)
        goto out;
    b = (Building *)PyDict_GetItemWithError(g->latest, key);
    if (b == NULL && PyErr_Occurred())
        goto out;
    int took = 0;
    if (b != NULL) {
        took = building_take(g, b, s, point);
        if (took < 0)
            goto out;
    }
    if (!took) {
        b = building_new(key, s, point, t);
        if (b == NULL)
            goto out;
        if (PyDict_SetItem(g->latest, key, (PyObject *)b) < 0 || open_append(g, b) < 0) {
            Py_DECREF(b);
            goto out;
        }
        Py_DECREF(b); /* the dict and the open ring hold it */
    }
    if (b->points == g->complete_at)
        b->complete = 1;
    result = 0;
out:
    Py_XDECREF(key);
    Py_DECREF(s);
    return result;
}

/* Place buffered sightings up to horizon_ns in time order, merging runs and late heap. */
static int release(Grouper *g, __int128 horizon_ns, PyObject *done)
{
    for (;;) {
        Heap *heads = &g->heads, *late = &g->late;
        if (heads->length && heads->items[0].t <= horizon_ns &&
            (!late->length || heads->items[0].t <= late->items[0].t)) {
            Run *run = &g->runs[heads->items[0].run];
            int64_t t = run_first_time(run);
            PyObject *released = run_pop_first(run);
            if (run->length) {
                Entry next = {run_first_time(run), g->arrivals++, heads->items[0].run, NULL};
                heap_replace_top(heads, next);
            } else {
                heap_pop(heads);
            }
            if (place(g, released, t, done) < 0)
                return -1;
        } else if (late->length && late->items[0].t <= horizon_ns) {
            Entry entry = heap_pop(late);
            if (place(g, entry.sighting, entry.t, done) < 0)
                return -1;
        } else {
            return 0;
        }
    }
}

static Py_ssize_t run_index(Grouper *g, PyObject *point)
{
    PyObject *index = PyDict_GetItemWithError(g->run_of_point, point);
    if (index != NULL)
        return PyLong_AsSsize_t(index);
    if (PyErr_Occurred())
        return -1;
    if (g->run_count == g->run_capacity) {
        Py_ssize_t grown = g->run_capacity ? 2 * g->run_capacity : 8;
        Run *runs = PyMem_Realloc(g->runs, sizeof(Run) * (size_t)grown);
        if (runs == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        g->runs = runs;
        g->run_capacity = grown;
    }
    PyObject *number = PyLong_FromSsize_t(g->run_count);
    if (number == NULL)
        return -1;
    int failed = PyDict_SetItem(g->run_of_point, point, number);
    Py_DECREF(number);
    if (failed < 0)
        return -1;
    g->runs[g->run_count] = (Run){NULL, NULL, 0, 0, 0};
    return g->run_count++;
}

static int add_one(Grouper *g, PyObject *s, PyObject *done)
{
    int64_t t;
    if (check_sighting(s) < 0 || time_of(s, &t) < 0)
        return -1;
    Py_ssize_t index = run_index(g, PyTuple_GET_ITEM(s, 0));
    if (index < 0)
        return -1;
    Run *run = &g->runs[index];
    if (!run->length) {
        if (run_append(run, s, t) < 0)
            return -1;
        Entry head = {t, g->arrivals++, index, NULL};
        if (heap_push(&g->heads, head) < 0)
            return -1;
    } else if (t >= run_last_time(run)) {
        if (run_append(run, s, t) < 0)
            return -1;
    } else {
        Entry entry = {t, g->arrivals++, -1, Py_NewRef(s)};
        if (heap_push(&g->late, entry) < 0) {
            Py_DECREF(s);
            return -1;
        }
    }
    if (!g->has_newest || t >= g->newest_ns) {
        g->newest_ns = t;
        g->has_newest = 1;
    } else {
        __int128 wanted = 2 * ((__int128)g->newest_ns - t); /* exact, as Python's ints */
        if (wanted > g->hold_ns && g->hold_ns < g->max_hold_ns)
            g->hold_ns = wanted < g->max_hold_ns ? (int64_t)wanted : g->max_hold_ns;
    }
    return release(g, (__int128)g->newest_ns - g->hold_ns, done);
}

PyDoc_STRVAR(add_many_doc,
"add_many(sightings) -> list of lists of sightings\n\n"
"Take sightings in input order; return the packets they closed, each as its sightings\n"
"in arrival order.");

static PyObject *grouper_add_many(Grouper *g, PyObject *sightings)
{
    PyObject *done = PyList_New(0), *iterator, *s;
    if (done == NULL)
        return NULL;
    iterator = PyObject_GetIter(sightings);
    if (iterator == NULL) {
        Py_DECREF(done);
        return NULL;
    }
    while ((s = PyIter_Next(iterator)) != NULL) {
        int failed = add_one(g, s, done);
        Py_DECREF(s);
        if (failed < 0)
            break;
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred()) {
        Py_DECREF(done);
        return NULL;
    }
    return done;
}

static PyObject *grouper_finish(Grouper *g, PyObject *Py_UNUSED(ignored))
{
    PyObject *done = PyList_New(0);
    if (done == NULL)
        return NULL;
    if (g->has_newest && release(g, g->newest_ns, done) < 0)
        goto fail;
    while (g->open_length) {
        if (emit_oldest(g, done) < 0)
            goto fail;
    }
    return done;
fail:
    Py_DECREF(done);
    return NULL;
}

static PyObject *grouper_held(Grouper *g, void *Py_UNUSED(closure))
{
    Py_ssize_t held = g->late.length;
    for (Py_ssize_t i = 0; i < g->run_count; i++)
        held += g->runs[i].length;
    for (Py_ssize_t i = 0; i < g->open_length; i++)
        held += PyList_GET_SIZE(g->open[(g->open_first + i) % g->open_capacity]->sightings);
    return PyLong_FromSsize_t(held);
}

static int grouper_init(Grouper *g, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"window_ns", "initial_hold_ns", "complete_at", "fingerprint",
                            "seen_again", "fields", "inner_field", NULL};
    long long window_ns, initial_hold_ns;
    Py_ssize_t complete_at, inner_field;
    PyObject *fields, *fingerprint, *seen_again;
    if (g->latest != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Grouper is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLnOOO!n", names, &window_ns,
                                     &initial_hold_ns, &complete_at, &fingerprint, &seen_again,
                                     &PyTuple_Type, &fields, &inner_field))
        return -1;
    if (window_ns <= 0 || inner_field < 0 || PyTuple_GET_SIZE(fields) != NAT_PROOF_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "Grouper: window_ns > 0 and 10 fingerprint fields");
        return -1;
    }
    for (int i = 0; i < NAT_PROOF_FIELDS; i++) {
        g->fields[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(fields, i));
        if (g->fields[i] < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "Grouper: field indexes are >= 0");
            return -1;
        }
    }
    g->complete_at = complete_at;
    g->inner_field = inner_field;
    g->fingerprint = Py_NewRef(fingerprint);
    g->seen_again = Py_NewRef(seen_again);
    g->window_ns = window_ns;
    g->max_hold_ns = window_ns / 2;
    g->hold_ns = initial_hold_ns < g->max_hold_ns ? initial_hold_ns : g->max_hold_ns;
    g->run_of_point = PyDict_New();
    g->latest = PyDict_New();
    if (g->run_of_point == NULL || g->latest == NULL)
        return -1;
    return 0;
}

static void grouper_dealloc(Grouper *g)
{
    for (Py_ssize_t i = 0; i < g->run_count; i++) {
        Run *run = &g->runs[i];
        while (run->length)
            Py_DECREF(run_pop_first(run));
        PyMem_Free(run->items);
        PyMem_Free(run->times);
    }
    PyMem_Free(g->runs);
    for (Py_ssize_t i = 0; i < g->late.length; i++)
        Py_DECREF(g->late.items[i].sighting);
    PyMem_Free(g->late.items);
    PyMem_Free(g->heads.items);
    for (Py_ssize_t i = 0; i < g->open_length; i++)
        Py_DECREF(g->open[(g->open_first + i) % g->open_capacity]);
    PyMem_Free(g->open);
    Py_XDECREF(g->run_of_point);
    Py_XDECREF(g->latest);
    Py_XDECREF(g->fingerprint);
    Py_XDECREF(g->seen_again);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static PyMethodDef grouper_methods[] = {
    {"add_many", (PyCFunction)grouper_add_many, METH_O, add_many_doc},
    {"finish", (PyCFunction)grouper_finish, METH_NOARGS,
     "End of input: place what is buffered; return every packet still open."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef grouper_getset[] = {
    {"held", (getter)grouper_held, NULL, "Sightings held (buffered or in open packets).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject GrouperType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flowtrace.correlate._grouper.Grouper",
    .tp_basicsize = sizeof(Grouper),
    .tp_dealloc = (destructor)grouper_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The correlator's reorder buffer and grouping by fingerprint (see match._Grouper).",
    .tp_methods = grouper_methods,
    .tp_getset = grouper_getset,
    .tp_init = (initproc)grouper_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_grouper",
    "The correlator's per-sighting work in C (see flowtrace/correlate/match.py).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__grouper(void)
{
    PyObject *m;
    if (PyType_Ready(&BuildingType) < 0 || PyType_Ready(&GrouperType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Grouper", (PyObject *)&GrouperType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
