/* The scheduler's frame reader: read what waits on its ROUTER socket, in C.
 *
 * The scheduler's loop reads every frame any peer sends, and a flood from connections it
 * already ignores (peers in their cool-down, runtime/guard.py) cost it ~4 us a frame in
 * pyzmq's recv_multipart, at real-time priority: 100,000 frames over 300 connections held
 * a CPU for a third of a second on a 2-core machine, and every stream task waited. Here
 * such a frame costs one zmq_msg_recv and one dict lookup, and never becomes a Python
 * object; the others come back as lists of bytes, as recv_multipart returns them.
 *
 * Discussion: libzmq is the copy pyzmq loaded (its wheel bundles one); this module finds
 * it by path (`open_library`, with RTLD_NOLOAD so that it is never a second copy) and
 * calls its public C API on the socket pyzmq created (`Socket.underlying`). Only the
 * scheduler's loop thread uses that socket, so nothing here locks. Where this cannot be
 * built or the library cannot be found, the scheduler reads with pyzmq (scheduler/server.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <string.h>

/* zmq.h's zmq_msg_t: 64 opaque bytes, aligned as the library requires. */
typedef struct {
    unsigned char bytes[64];
} __attribute__((aligned(sizeof(void *)))) zmq_msg;

#define ZMQ_DONTWAIT 1

static int (*msg_init)(zmq_msg *);
static int (*msg_recv)(zmq_msg *, void *, int);
static int (*msg_close)(zmq_msg *);
static void *(*msg_data)(zmq_msg *);
static size_t (*msg_size)(const zmq_msg *);
static int (*msg_more)(const zmq_msg *);
static int (*zmq_errno_fn)(void);
static int loaded = 0;

static PyObject *
open_library(PyObject *self, PyObject *arg)
{
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL)
        return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) {
        PyErr_Format(PyExc_OSError, "libzmq is not loaded from %s", path);
        return NULL;
    }
    msg_init = dlsym(lib, "zmq_msg_init");
    msg_recv = dlsym(lib, "zmq_msg_recv");
    msg_close = dlsym(lib, "zmq_msg_close");
    msg_data = dlsym(lib, "zmq_msg_data");
    msg_size = dlsym(lib, "zmq_msg_size");
    msg_more = dlsym(lib, "zmq_msg_more");
    zmq_errno_fn = dlsym(lib, "zmq_errno");
    if (!msg_init || !msg_recv || !msg_close || !msg_data || !msg_size || !msg_more ||
        !zmq_errno_fn) {
        PyErr_Format(PyExc_OSError, "%s lacks part of libzmq's message API", path);
        return NULL;
    }
    loaded = 1;
    Py_RETURN_NONE;
}

/* Receive one part into `msg`: 1 on success, 0 when nothing waits, -1 with an error set. */
static int
recv_part(void *socket, zmq_msg *msg)
{
    msg_init(msg);
    if (msg_recv(msg, socket, ZMQ_DONTWAIT) >= 0)
        return 1;
    int err = zmq_errno_fn();
    msg_close(msg);
    if (err == EAGAIN)
        return 0;
    if (err == EINTR)
        return 0; /* the loop polls again and comes back */
    PyErr_Format(PyExc_OSError, "zmq_msg_recv failed: %s", strerror(err));
    return -1;
}

/* Drop the rest of a message whose first part was read (a part is always there: libzmq
 * delivers messages whole). */
static void
skip_rest(void *socket, zmq_msg *first, Py_ssize_t *bytes)
{
    int more = msg_more(first);
    msg_close(first);
    while (more) {
        zmq_msg part;
        if (recv_part(socket, &part) != 1) {
            PyErr_Clear();
            return;
        }
        *bytes += (Py_ssize_t)msg_size(&part);
        more = msg_more(&part);
        msg_close(&part);
    }
}

PyDoc_STRVAR(read_doc,
"read(socket_address, max_messages, ignored, now) -> (messages, frames_ignored, bytes)\n\n"
"Read up to `max_messages` whole messages waiting on the socket at `socket_address`\n"
"(pyzmq's Socket.underlying) without blocking. A message whose first part (the routing\n"
"id) is a key of dict `ignored` whose value (a time, float) is after `now` is dropped\n"
"unread; every other comes back as a list of bytes. Returns the messages kept, how many\n"
"were dropped, and the bytes of all of them.");

static PyObject *
read_frames(PyObject *self, PyObject *args)
{
    unsigned long long address;
    Py_ssize_t max_messages;
    PyObject *ignored;
    double now;
    if (!PyArg_ParseTuple(args, "KnO!d", &address, &max_messages, &PyDict_Type, &ignored, &now))
        return NULL;
    if (!loaded) {
        PyErr_SetString(PyExc_RuntimeError, "open_library() first");
        return NULL;
    }
    void *socket = (void *)(uintptr_t)address;
    PyObject *kept = PyList_New(0);
    if (kept == NULL)
        return NULL;
    Py_ssize_t dropped = 0, bytes = 0;
    int check_ignored = PyDict_GET_SIZE(ignored) > 0;
    for (Py_ssize_t n = 0; n < max_messages; n++) {
        zmq_msg first;
        int got = recv_part(socket, &first);
        if (got < 0)
            goto fail;
        if (got == 0)
            break;
        bytes += (Py_ssize_t)msg_size(&first);
        PyObject *routing_id =
            PyBytes_FromStringAndSize((const char *)msg_data(&first), (Py_ssize_t)msg_size(&first));
        if (routing_id == NULL) {
            skip_rest(socket, &first, &bytes);
            goto fail;
        }
        if (check_ignored) {
            PyObject *until = PyDict_GetItemWithError(ignored, routing_id);
            if (until == NULL && PyErr_Occurred()) {
                Py_DECREF(routing_id);
                skip_rest(socket, &first, &bytes);
                goto fail;
            }
            double ends = until == NULL ? 0.0 : PyFloat_AsDouble(until);
            if (ends == -1.0 && PyErr_Occurred()) {
                Py_DECREF(routing_id);
                skip_rest(socket, &first, &bytes);
                goto fail;
            }
            if (until != NULL && ends > now) {
                Py_DECREF(routing_id);
                skip_rest(socket, &first, &bytes);
                dropped++;
                continue;
            }
        }
        PyObject *parts = PyList_New(1);
        if (parts == NULL) {
            Py_DECREF(routing_id);
            skip_rest(socket, &first, &bytes);
            goto fail;
        }
        PyList_SET_ITEM(parts, 0, routing_id);
        int more = msg_more(&first);
        msg_close(&first);
        while (more) {
            zmq_msg part;
            got = recv_part(socket, &part);
            if (got != 1) {
                Py_DECREF(parts);
                if (got == 0)
                    PyErr_SetString(PyExc_OSError, "a message ended before its last part");
                goto fail;
            }
            bytes += (Py_ssize_t)msg_size(&part);
            PyObject *frame =
                PyBytes_FromStringAndSize((const char *)msg_data(&part), (Py_ssize_t)msg_size(&part));
            more = msg_more(&part);
            msg_close(&part);
            if (frame == NULL || PyList_Append(parts, frame) < 0) {
                Py_XDECREF(frame);
                Py_DECREF(parts);
                if (more) {
                    zmq_msg rest;
                    if (recv_part(socket, &rest) == 1)
                        skip_rest(socket, &rest, &bytes);
                }
                goto fail;
            }
            Py_DECREF(frame);
        }
        int appended = PyList_Append(kept, parts);
        Py_DECREF(parts);
        if (appended < 0)
            goto fail;
    }
    return Py_BuildValue("Nnn", kept, dropped, bytes);
fail:
    Py_DECREF(kept);
    return NULL;
}

static PyMethodDef methods[] = {
    {"open_library", open_library, METH_O,
     "open_library(path): use the libzmq already loaded from `path` (pyzmq's)."},
    {"read", read_frames, METH_VARARGS, read_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cframes", "The scheduler's frame reader (runtime/_frames.c).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__cframes(void)
{
    return PyModule_Create(&module);
}
