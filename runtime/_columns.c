/* Where each item of a packed msgpack array begins: a columnar bulk job's arguments
 * (runtime/columns.py) are one array, cut into chunks by position.
 *
 * scan(buffer) reads the array's header and skips over each item without decoding it, and
 * returns where every item starts (and where the last ends) as native uint32s, with the
 * longest item's length. Nothing is allocated per item: a map of 200,000 tiny calls is
 * scanned in well under a millisecond, where msgpack.Unpacker.skip() and tell() cost a
 * Python call per item (~60 ms).
 *
 * Discussion: items are skipped without recursion. `owed` counts the values still to skip
 * at each level of the current item; an array header opens a level of its length, a map
 * header one of twice its length. Every value takes at least one byte, so an item that
 * claims more values than bytes are left is cut short at once, and the loop never runs
 * longer than the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* An item may hold containers this many levels deep (its own counted), as msgpack's own
 * unpacker decodes one alone: deeper ones would scan here and fail everywhere else. */
#define MAX_LEVELS 1024

static uint64_t
big_endian(const unsigned char *p, int width)
{
    uint64_t value = 0;
    for (int i = 0; i < width; i++)
        value = (value << 8) | p[i];
    return value;
}

/* What the value whose first byte is at `p` takes: its header's bytes in `*head`, the bytes
 * that follow the header in `*body` (a str, bin or ext's data), and the values it contains
 * in `*inner` (an array's items, a map's keys and values). -1 if the byte begins no value. */
static int
measure(unsigned char b, int *head, int *width, uint64_t *body, uint64_t *inner)
{
    *head = 1;
    *width = 0; /* bytes of a big-endian length after the first byte */
    *body = 0;
    *inner = 0;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return 0;
    if (b <= 0x8f) {
        *inner = 2 * (uint64_t)(b & 0x0f);
        return 0;
    }
    if (b <= 0x9f) {
        *inner = b & 0x0f;
        return 0;
    }
    if (b <= 0xbf) {
        *body = b & 0x1f;
        return 0;
    }
    switch (b) {
    case 0xc4: case 0xd9: *width = 1; return 0;             /* bin8, str8 */
    case 0xc5: case 0xda: *width = 2; return 0;             /* bin16, str16 */
    case 0xc6: case 0xdb: *width = 4; return 0;             /* bin32, str32 */
    case 0xc7: *width = 1; *body = 1; return 0;             /* ext8: type byte, data */
    case 0xc8: *width = 2; *body = 1; return 0;             /* ext16 */
    case 0xc9: *width = 4; *body = 1; return 0;             /* ext32 */
    case 0xca: *body = 4; return 0;                         /* float32 */
    case 0xcb: *body = 8; return 0;                         /* float64 */
    case 0xcc: case 0xd0: *body = 1; return 0;              /* uint8, int8 */
    case 0xcd: case 0xd1: *body = 2; return 0;
    case 0xce: case 0xd2: *body = 4; return 0;
    case 0xcf: case 0xd3: *body = 8; return 0;
    case 0xd4: *body = 2; return 0;                         /* fixext1: type, data */
    case 0xd5: *body = 3; return 0;
    case 0xd6: *body = 5; return 0;
    case 0xd7: *body = 9; return 0;
    case 0xd8: *body = 17; return 0;
    case 0xdc: *width = 2; return 1;                        /* array16 */
    case 0xdd: *width = 4; return 1;                        /* array32 */
    case 0xde: *width = 2; return 2;                        /* map16 */
    case 0xdf: *width = 4; return 2;                        /* map32 */
    }
    return -1; /* 0xc1: never used */
}

PyDoc_STRVAR(scan_doc,
"scan(buffer) -> (offsets, longest)\n\n"
"`buffer` holds exactly one msgpack array. `offsets` (bytes of native uint32s, one more\n"
"than the array has items) says where each item starts and the last one ends; `longest`\n"
"is the longest item's length in bytes. ValueError saying what is wrong if the buffer is\n"
"not one well-formed array (4 GiB at most; items nested 1,024 levels deep at most).");

static PyObject *
scan(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *data = view.buf;
    uint64_t size = (uint64_t)view.len;
    PyObject *result = NULL, *offsets = NULL;
    const char *problem = NULL;
    uint64_t at = 0, count = 0;

    if (size > UINT32_MAX) {
        problem = "it is 4 GiB or more";
        goto done;
    }
    if (size == 0) {
        problem = "it is empty";
        goto done;
    }
    unsigned char first = data[0];
    if (first >= 0x90 && first <= 0x9f) {
        count = first & 0x0f;
        at = 1;
    } else if (first == 0xdc || first == 0xdd) {
        int width = first == 0xdc ? 2 : 4;
        if (size < 1 + (uint64_t)width) {
            problem = "its array header is cut short";
            goto done;
        }
        count = big_endian(data + 1, width);
        at = 1 + width;
    } else {
        problem = "it is not a msgpack array";
        goto done;
    }
    if (count > size - at) {
        problem = "its array header claims more items than it has bytes";
        goto done;
    }
    offsets = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((count + 1) * sizeof(uint32_t)));
    if (offsets == NULL)
        goto done;
    uint32_t *out = (uint32_t *)PyBytes_AS_STRING(offsets);
    uint64_t longest = 0;
    for (uint64_t item = 0; item < count; item++) {
        uint64_t start = at;
        /* owed[d]: values still to skip at nesting level d (0: the item itself); `total`
         * their sum, which can never exceed the bytes left. */
        uint64_t owed[MAX_LEVELS + 1], total = 1;
        int depth = 0;
        owed[0] = 1;
        out[item] = (uint32_t)start;
        while (depth >= 0) {
            if (owed[depth] == 0) {
                depth--;
                continue;
            }
            int head, width;
            uint64_t body, inner;
            if (at >= size) {
                problem = "an item is cut short";
                goto done;
            }
            int kind = measure(data[at], &head, &width, &body, &inner);
            if (kind < 0) {
                problem = "it holds the byte 0xc1, which msgpack never uses";
                goto done;
            }
            if (size - at < (uint64_t)(head + width)) {
                problem = "an item is cut short";
                goto done;
            }
            uint64_t length = width ? big_endian(data + at + head, width) : 0;
            at += head + width;
            if (kind > 0)
                inner = length * (uint64_t)kind; /* an array's items, a map's keys and values */
            else
                body += length;
            if (body > size - at) {
                problem = "an item is cut short";
                goto done;
            }
            at += body;
            owed[depth]--;
            total = total - 1 + inner;
            if (total > size - at) {
                problem = "an item claims more values than it has bytes";
                goto done;
            }
            if (inner) {
                if (depth == MAX_LEVELS) {
                    problem = "an item is nested more than 1,024 levels deep";
                    goto done;
                }
                owed[++depth] = inner;
            }
        }
        if (at - start > longest)
            longest = at - start;
    }
    out[count] = (uint32_t)at;
    if (at != size) {
        problem = "bytes follow the array's last item";
        goto done;
    }
    result = Py_BuildValue("(OK)", offsets, (unsigned long long)longest);
done:
    PyBuffer_Release(&view);
    Py_XDECREF(offsets);
    if (problem != NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "not one packed array: %s", problem);
    return problem != NULL ? NULL : result;
}

PyDoc_STRVAR(pack_numbers_doc,
"pack_numbers(items, start, stop) -> bytes or None\n\n"
"items[start:stop], a block of a big argument, if its items are all exact ints that fit\n"
"in 64 bits or all exact floats, packed as raw numbers: 0xc1, a type code ('b', 'h', 'i'\n"
"for signed ints of 8, 16, 32 bits, 'B', 'H', 'I' unsigned, 'q' int64, 'd' float64), then\n"
"each item little-endian (ints in the narrowest of those that holds every one). None if\n"
"`items` is not a list or tuple, or the block is empty, holds anything else, or is ints\n"
"that msgpack packs in fewer bytes (pack it with msgpack instead).");

/* Discussion: msgpack packs an int in ~30 ns here, so a 3-million-int partition took ~90 ms
 * of the client's submit; this loop takes a few ns an item (runtime/numblocks.py). Exact
 * types only: a bool or an int subclass must come back as msgpack would return it, and a
 * float subclass too. */
static PyObject *
pack_numbers(PyObject *self, PyObject *args)
{
    PyObject *seq;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "Onn:pack_numbers", &seq, &start, &stop))
        return NULL;
    if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq))
        Py_RETURN_NONE;
    Py_ssize_t size = PySequence_Fast_GET_SIZE(seq);
    start = start < 0 ? 0 : start > size ? size : start;
    stop = stop < start ? start : stop > size ? size : stop;
    Py_ssize_t count = stop - start;
    if (count == 0 || count > (PY_SSIZE_T_MAX - 2) / 8)
        Py_RETURN_NONE;
    PyObject **items = PySequence_Fast_ITEMS(seq) + start;
    int floats = PyFloat_CheckExact(items[0]);
    /* One pass reads every item into 64 bits; ints that all fit are narrowed after. */
    PyObject *wide = PyBytes_FromStringAndSize(NULL, 2 + count * 8);
    if (wide == NULL)
        return NULL;
    unsigned char *at = (unsigned char *)PyBytes_AS_STRING(wide);
    at[0] = 0xc1;
    at[1] = floats ? 'd' : 'q';
    at += 2;
    long long lowest = 0, highest = 0;
    Py_ssize_t msgpack_bytes = 0; /* what msgpack would take for the same ints */
    for (Py_ssize_t i = 0; i < count; i++, at += 8) {
        uint64_t bits;
        if (floats) {
            if (!PyFloat_CheckExact(items[i]))
                goto not_numbers;
            double value = PyFloat_AS_DOUBLE(items[i]);
            memcpy(&bits, &value, sizeof bits);
        }
        else {
            int overflow = 0;
            if (!PyLong_CheckExact(items[i]))
                goto not_numbers;
            long long value = PyLong_AsLongLongAndOverflow(items[i], &overflow);
            if (overflow)
                goto not_numbers;
            lowest = value < lowest ? value : lowest;
            highest = value > highest ? value : highest;
            msgpack_bytes += value >= -32 && value <= 127                ? 1
                             : value >= -128 && value <= 255             ? 2
                             : value >= -32768 && value <= 65535         ? 3
                             : value >= INT32_MIN && value <= UINT32_MAX ? 5
                                                                         : 9;
            bits = (uint64_t)value;
        }
        for (int byte = 0; byte < 8; byte++)
            at[byte] = (unsigned char)(bits >> (8 * byte));
    }
    /* The narrowest type that holds the block: unsigned if nothing is negative. */
    int width = 8;
    char code = 'q';
    if (lowest >= 0) {
        width = highest <= UINT8_MAX    ? 1
                : highest <= UINT16_MAX ? 2
                : highest <= UINT32_MAX ? 4
                                        : 8;
        code = width == 1 ? 'B' : width == 2 ? 'H' : width == 4 ? 'I' : 'q';
    }
    else {
        width = lowest >= INT8_MIN && highest <= INT8_MAX     ? 1
                : lowest >= INT16_MIN && highest <= INT16_MAX ? 2
                : lowest >= INT32_MIN && highest <= INT32_MAX ? 4
                                                              : 8;
        code = width == 1 ? 'b' : width == 2 ? 'h' : width == 4 ? 'i' : 'q';
    }
    /* One big value widens every item: past msgpack's own size, let msgpack pack it. */
    if (!floats && count * width > msgpack_bytes)
        goto not_numbers;
    if (floats || width == 8)
        return wide;
    PyObject *narrow = PyBytes_FromStringAndSize(NULL, 2 + count * width);
    if (narrow != NULL) {
        const unsigned char *from = (unsigned char *)PyBytes_AS_STRING(wide) + 2;
        unsigned char *to = (unsigned char *)PyBytes_AS_STRING(narrow);
        *to++ = 0xc1;
        *to++ = code;
        for (Py_ssize_t i = 0; i < count; i++, from += 8, to += width)
            memcpy(to, from, width); /* the low bytes of a little-endian value */
    }
    Py_DECREF(wide);
    return narrow;
not_numbers:
    Py_DECREF(wide);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_O, scan_doc},
    {"pack_numbers", pack_numbers, METH_VARARGS, pack_numbers_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ccolumns",
    "Packed arrays scanned, and blocks of numbers packed (runtime/_columns.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__ccolumns(void)
{
    return PyModule_Create(&module);
}
