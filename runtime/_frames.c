/* The scheduler's frame reader: read what waits on its ROUTER socket, in C.
 *
 * The scheduler's loop reads every frame any peer sends, and a flood from connections it
 * already ignores (peers in their cool-down, runtime/guard.py) cost it ~4 us a frame in
 * pyzmq's recv_multipart, at real-time priority: 100,000 frames over 300 connections held
 * a CPU for a third of a second on a 2-core machine, and every stream task waited. Here
 * such a message costs a zmq_msg_recv per part and a dict lookup of its routing id (the one
 * Python object made for it); the others come back as lists of bytes, as recv_multipart
 * returns them.
 *
 * Discussion: libzmq is the copy pyzmq calls (its wheel bundles one): `open_library` looks
 * its symbols up from pyzmq's own backend module, already loaded (RTLD_NOLOAD: never a
 * second copy), and runtime/frames.py checks the version against pyzmq's before use. The
 * reader calls libzmq's public C API on the socket pyzmq created (`Socket.underlying`).
 * Only the scheduler's loop thread uses that socket, so nothing here locks. Where this
 * cannot be built or the library cannot be reached, the scheduler reads with pyzmq.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>

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
static void (*zmq_version_fn)(int *, int *, int *);
static PyObject *zmq_error = NULL; /* the class socket errors are raised as (zmq.ZMQError) */
static int loaded = 0;

PyDoc_STRVAR(open_doc,
"open_library(path, error_class) -> (major, minor, patch)\n\n"
"Use the libzmq that the already-loaded module at `path` (pyzmq's backend) links: its\n"
"symbols are looked up from that module, so they are the copy pyzmq calls. Errors are\n"
"raised as `error_class(errno)` (zmq.ZMQError). Returns the library's version, for the\n"
"caller to compare with pyzmq's.");

static PyObject *
open_library(PyObject *self, PyObject *args)
{
    const char *path;
    PyObject *error_class;
    if (!PyArg_ParseTuple(args, "sO", &path, &error_class))
        return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) {
        PyErr_Format(PyExc_OSError, "%s is not loaded", path);
        return NULL;
    }
    /* Looked up first, kept only if all are there: a failed call leaves a working set. */
    void *found[8] = {
        dlsym(lib, "zmq_msg_init"), dlsym(lib, "zmq_msg_recv"), dlsym(lib, "zmq_msg_close"),
        dlsym(lib, "zmq_msg_data"), dlsym(lib, "zmq_msg_size"), dlsym(lib, "zmq_msg_more"),
        dlsym(lib, "zmq_errno"), dlsym(lib, "zmq_version"),
    };
    for (int i = 0; i < 8; i++) {
        if (found[i] == NULL) {
            PyErr_Format(PyExc_OSError, "libzmq's message API is not reachable from %s", path);
            return NULL;
        }
    }
    msg_init = found[0];
    msg_recv = found[1];
    msg_close = found[2];
    msg_data = found[3];
    msg_size = found[4];
    msg_more = found[5];
    zmq_errno_fn = found[6];
    zmq_version_fn = found[7];
    Py_INCREF(error_class);
    Py_XSETREF(zmq_error, error_class);
    loaded = 1;
    int major, minor, patch;
    zmq_version_fn(&major, &minor, &patch);
    return Py_BuildValue("(iii)", major, minor, patch);
}

enum { GOT = 1, NONE = 0, FAILED = -1 };

/* Receive the next part of a message into `msg`. The first part of a message may find
 * nothing waiting (NONE: EAGAIN, or EINTR: the loop polls again and comes back); a later
 * part is always there (libzmq delivers messages whole), so EINTR is retried. FAILED sets
 * `*err` (ETERM, ENOTSOCK: the socket or its context is gone). */
static int
recv_part(void *socket, zmq_msg *msg, int first, int *err)
{
    for (;;) {
        msg_init(msg);
        if (msg_recv(msg, socket, ZMQ_DONTWAIT) >= 0)
            return GOT;
        *err = zmq_errno_fn();
        msg_close(msg);
        if (*err == EINTR && !first)
            continue;
        if (first && (*err == EAGAIN || *err == EINTR))
            return NONE;
        return FAILED;
    }
}

/* Read and drop the parts left of a message whose part `last` was read (and is closed
 * here). FAILED with `*err` if the socket failed meanwhile. */
static int
skip_rest(void *socket, zmq_msg *last, Py_ssize_t *bytes, int *err)
{
    int more = msg_more(last);
    msg_close(last);
    while (more) {
        zmq_msg part;
        if (recv_part(socket, &part, 0, err) != GOT)
            return FAILED;
        *bytes += (Py_ssize_t)msg_size(&part);
        more = msg_more(&part);
        msg_close(&part);
    }
    return GOT;
}

static PyObject *
bytes_of(zmq_msg *msg)
{
    return PyBytes_FromStringAndSize((const char *)msg_data(msg), (Py_ssize_t)msg_size(msg));
}

PyDoc_STRVAR(read_doc,
"read(socket_address, max_messages, ignored, now) -> (messages, dropped, bytes)\n\n"
"Read up to `max_messages` whole messages waiting on the socket at `socket_address`\n"
"(pyzmq's Socket.underlying) without blocking. A message whose first part (the routing\n"
"id) is a key of dict `ignored` whose value (a time) is after `now` is dropped unread;\n"
"every other comes back as a list of bytes. Returns the messages kept, how many were\n"
"dropped, and the bytes of all of them. If the socket fails after some messages were\n"
"read, those are returned (the failure comes again at the next read, before anything is\n"
"taken); otherwise it raises the error class given to open_library, with the errno. A\n"
"Python error (memory, or an `ignored` value that is not a number) raises, and the\n"
"messages of that call are lost; the socket is left at a message's first part.");

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
    int err = 0;
    int check_ignored = PyDict_GET_SIZE(ignored) > 0;
    zmq_msg first; /* a message's first part, or the part open when a Python error came */
    for (Py_ssize_t n = 0; n < max_messages; n++) {
        int got = recv_part(socket, &first, 1, &err);
        if (got == NONE)
            break;
        if (got == FAILED)
            goto socket_failed;
        bytes += (Py_ssize_t)msg_size(&first);
        PyObject *routing_id = bytes_of(&first);
        if (routing_id == NULL)
            goto python_failed_in_message; /* `first` is still open */
        if (check_ignored) {
            PyObject *until = PyDict_GetItemWithError(ignored, routing_id); /* borrowed */
            double ends = 0.0;
            if (until != NULL)
                ends = PyFloat_AsDouble(until);
            if ((until == NULL || ends == -1.0) && PyErr_Occurred()) {
                Py_DECREF(routing_id);
                goto python_failed_in_message;
            }
            if (until != NULL && ends > now) {
                Py_DECREF(routing_id);
                if (skip_rest(socket, &first, &bytes, &err) == FAILED)
                    goto socket_failed;
                dropped++;
                continue;
            }
        }
        PyObject *parts = PyList_New(1);
        if (parts == NULL) {
            Py_DECREF(routing_id);
            goto python_failed_in_message;
        }
        PyList_SET_ITEM(parts, 0, routing_id); /* steals the reference */
        int more = msg_more(&first);
        msg_close(&first);
        while (more) {
            zmq_msg part;
            if (recv_part(socket, &part, 0, &err) != GOT) {
                Py_DECREF(parts);
                goto socket_failed;
            }
            bytes += (Py_ssize_t)msg_size(&part);
            PyObject *frame = bytes_of(&part);
            if (frame == NULL || PyList_Append(parts, frame) < 0) {
                Py_XDECREF(frame);
                Py_DECREF(parts);
                first = part; /* drop the rest of this message before raising */
                goto python_failed_in_message;
            }
            Py_DECREF(frame);
            more = msg_more(&part);
            msg_close(&part);
        }
        int appended = PyList_Append(kept, parts);
        Py_DECREF(parts);
        if (appended < 0)
            goto python_failed;
    }
    return Py_BuildValue("Nnn", kept, dropped, bytes);

python_failed_in_message:
    /* A Python error (memory) with part `first` of a message read and open: read the rest
     * of that message away, so that the next read starts at a message's first part. */
    {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        skip_rest(socket, &first, &bytes, &err);
        PyErr_Restore(type, value, traceback);
    }
python_failed:
    Py_DECREF(kept);
    return NULL;

socket_failed:
    if (PyList_GET_SIZE(kept) > 0) /* give what was read; the error comes again next time */
        return Py_BuildValue("Nnn", kept, dropped, bytes);
    Py_DECREF(kept);
    PyObject *code = PyLong_FromLong(err);
    if (code != NULL) {
        PyErr_SetObject(zmq_error, code);
        Py_DECREF(code);
    }
    return NULL;
}

static PyMethodDef methods[] = {
    {"open_library", open_library, METH_VARARGS, open_doc},
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
