/* The record gate: Tidal's hot path, in C.
 *
 * Every input iterable a task consumes is wrapped in a GatedIterator. Before handing out
 * each record it looks at one int on a shared Gate: when the executor wants its hub back
 * (a suspend or kill command arrived) that int is non-zero and the iterator calls
 * gate.hook(), which switches from the task's greenlet to the hub. The task's whole C and
 * Python stack stays parked inside that call, so suspension works even while C code such
 * as sum() or Counter() is consuming the iterator.
 *
 * Discussion: a Python-level wrapper costs ~35 ns per record on CPython 3.11 as a generator
 * and ~90 ns as the iterator class the fallback must be (an exception at a boundary must not
 * end the iterator); this costs well under 1 ns, which is the whole reason it exists.
 * runtime/gate.py holds the pure-Python twin used when this cannot be compiled.
 *
 * Discussion: when a C consumer drains a C iterator (sum over a list), no bytecode runs,
 * so CPython never offers the GIL to the executor's listener thread and a suspend command
 * could not even be read. Every `gil_interval` records we therefore release and retake
 * the GIL; if the listener has asked for it, it gets it then. That costs ~0.05 ns/record.
 *
 * The watcher (Gate.watch(fd)). A command from the scheduler reaches the executor's
 * listener thread, which needs the GIL to read it; while a task runs pure Python the
 * listener waits for the interpreter to hand the GIL over (the switch interval, then the
 * OS), ~0.1-1 ms and worse on a loaded machine. The watcher is a thread of this module that
 * never takes the GIL: it polls a file descriptor (the ZeroMQ socket's ZMQ_FD, readable when
 * frames arrive) and raises `requested` (`watch_raises` counts it) the moment it becomes
 * readable. The running task then enters the hub at its next record boundary, and the hub
 * gives the listener the GIL at once (runtime/kernel.py). It only polls: it never reads the
 * descriptor, so libzmq's own use of it is untouched. While the descriptor stays readable
 * (the listener has not read yet) it looks again after a growing pause, up to 2 ms.
 * Discussion: it is a speed-up, not a guarantee: the listener's own poll waits on the same
 * descriptor, and a listener that reads first (it won the GIL by itself) leaves nothing
 * for the watcher to see; commands then travel as they did before.
 * Linux (and any POSIX system with ppoll); setup.py builds the module only where it can.
 */
#define _GNU_SOURCE  /* ppoll */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    volatile int requested; /* non-zero: the hub wants control at the next record boundary */
    int gil_interval;       /* release the GIL every this many records: a power of two; 0 = never */
    long long records;      /* records handed out through this gate, all tasks together */
    PyObject *hook;         /* called with no arguments when `requested` is set */
    volatile long long watch_raises;  /* times the watcher raised `requested` */
    int watch_fd;           /* the descriptor watched (-1: none) */
    int wake[2];            /* a pipe: a byte on it makes the watcher re-read watch_fd, or stop */
    int watching;           /* the watcher thread runs */
    int watch_realtime;     /* the watcher asks for SCHED_FIFO, as the listener does */
    volatile int boost_tid; /* a thread the watcher gives boost_nice as it raises (0: none) */
    int boost_nice;
    volatile int boost_realtime;  /* ...and SCHED_FIFO, for at most RT_BOOST_NS a raise */
    volatile long long rt_until_ns;  /* when the watcher puts boost_tid back to SCHED_OTHER (0: not boosted) */
    pthread_t watcher;
} Gate;

typedef struct {
    PyObject_HEAD
    PyObject *source;       /* the wrapped iterator */
    Gate *gate;
} GatedIterator;

static PyTypeObject GateType;

/* ---- Gate ---------------------------------------------------------------------------- */

static int
gate_init(Gate *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"hook", NULL};
    PyObject *hook = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O", kwlist, &hook))
        return -1;
    Py_INCREF(hook);
    Py_XSETREF(self->hook, hook);
    self->requested = 0;
    self->records = 0;
    self->gil_interval = 1024;
    self->watch_raises = 0;
    self->watch_fd = -1;
    self->wake[0] = self->wake[1] = -1;
    self->watching = 0;
    self->boost_tid = 0;
    self->boost_nice = 0;
    self->boost_realtime = 0;
    self->rt_until_ns = 0;
    return 0;
}

/* ---- the watcher ----------------------------------------------------------------------- */

/* Discussion: how long a raise may keep the task thread at SCHED_FIFO. A record boundary
 * is microseconds away in any task that has them, and the hub puts the thread back to its
 * class's policy as it switches into the next task (runtime/realtime.py); only a task
 * inside one long C call (a 2 s sorted()) would keep it, and it must not keep a CPU from
 * every normal thread for that long: after this, the watcher puts it back itself. */
#define RT_BOOST_NS 2000000LL

static long long
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Put the boosted thread back to SCHED_OTHER (its nice stays) once its boost is over. */
static void
end_rt_boost(Gate *self, long long now)
{
    long long until = __atomic_load_n(&self->rt_until_ns, __ATOMIC_ACQUIRE);
    if (until == 0 || now < until)
        return;
    int tid = __atomic_load_n(&self->boost_tid, __ATOMIC_ACQUIRE);
    struct sched_param normal = {.sched_priority = 0};
    if (tid > 0)
        sched_setscheduler((pid_t)tid, SCHED_OTHER, &normal);
    /* (A boost given meanwhile, from boost_now(), is not undone early.) */
    __atomic_compare_exchange_n(&self->rt_until_ns, &until, 0, 0, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
}

/* The boosted thread to SCHED_FIFO for `for_ns`; 0 if done (or not asked for). */
static int
start_rt_boost(Gate *self, long long for_ns)
{
    int tid = __atomic_load_n(&self->boost_tid, __ATOMIC_ACQUIRE);
    if (tid <= 0 || !__atomic_load_n(&self->boost_realtime, __ATOMIC_ACQUIRE))
        return -1;
    struct sched_param fifo = {.sched_priority = 1};
    if (sched_setscheduler((pid_t)tid, SCHED_FIFO, &fifo) != 0) {
        __atomic_store_n(&self->boost_realtime, 0, __ATOMIC_RELEASE);  /* not permitted */
        return -1;
    }
    __atomic_store_n(&self->rt_until_ns, now_ns() + for_ns, __ATOMIC_RELEASE);
    return 0;
}

static void *
watch_main(void *arg)
{
    Gate *self = (Gate *)arg;
    if (self->watch_realtime) {
        /* Discussion: it sleeps almost always and works for microseconds; at normal
         * priority its wake-up could wait out a busy CPU's time slice, the very delay it
         * is there to remove (runtime/realtime.py). Without the privilege it carries on. */
        struct sched_param param = {.sched_priority = 1};
        pthread_setschedparam(pthread_self(), SCHED_FIFO, &param);
    }
    long pause_us = 0;      /* 0: the watched descriptor was not readable at the last look */
    for (;;) {
        int fd = __atomic_load_n(&self->watch_fd, __ATOMIC_ACQUIRE);
        struct pollfd fds[2] = {{self->wake[0], POLLIN, 0}, {fd, POLLIN, 0}};
        /* Wake for the pause, or for the end of a real-time boost, whichever is first. */
        long long wait_ns = pause_us ? pause_us * 1000LL : -1;
        long long until = __atomic_load_n(&self->rt_until_ns, __ATOMIC_ACQUIRE);
        if (until) {
            long long left = until - now_ns();
            left = left > 0 ? left : 0;
            wait_ns = (wait_ns < 0 || left < wait_ns) ? left : wait_ns;
        }
        struct timespec timeout = {wait_ns / 1000000000LL, wait_ns % 1000000000LL};
        /* Readable at the last look (not read yet): only the pipe, for a pause. */
        int n = ppoll(fds, (fd >= 0 && pause_us == 0) ? 2 : 1, wait_ns >= 0 ? &timeout : NULL,
                      NULL);
        if (n < 0 && errno != EINTR)
            return NULL;
        end_rt_boost(self, now_ns());
        if (n == 0 && pause_us == 0)
            continue;       /* only the boost's end was due */
        if (n > 0 && (fds[0].revents & POLLIN)) {
            char command = 0;
            if (read(self->wake[0], &command, 1) != 1 || command == 's')
                return NULL;
            pause_us = 0;
            continue;       /* a new descriptor: look at it */
        }
        int readable = 0;
        if (pause_us == 0 && n > 0 && (fds[1].revents & (POLLNVAL | POLLERR | POLLHUP))) {
            pause_us = 1000;    /* closed (a reconnect): wait for watch() to name the next */
            continue;
        }
        if (pause_us == 0) {
            readable = n > 0 && (fds[1].revents & POLLIN);
        } else if (fd >= 0) {   /* the pause is over: readable (still, or again)? */
            struct pollfd look = {fd, POLLIN, 0};
            readable = poll(&look, 1, 0) > 0 && (look.revents & POLLIN);
        }
        if (readable) {
            /* Discussion: the task thread must now run to its next record boundary, but a
             * batch task's thread runs at nice 10 (runtime/realtime.py) and on a busy
             * machine may wait tens of milliseconds for a CPU behind nice-0 processes (36
             * ms in `bench bigdata`). So it gets the stream nice at once; the hub gives it
             * back its class's nice when it has seen the raise (runtime/kernel.py). Lifted
             * before the raise is published, so that a hub which saw the raise never sees
             * the lift land after it set the class's nice again. */
            int tid = __atomic_load_n(&self->boost_tid, __ATOMIC_ACQUIRE);
            if (tid > 0 && setpriority(PRIO_PROCESS, (id_t)tid, self->boost_nice) != 0)
                __atomic_store_n(&self->boost_tid, 0, __ATOMIC_RELEASE);  /* not permitted */
            /* Discussion: the stream nice is not always enough. The thread may hold the GIL
             * while the OS runs others: traced in the unified benchmark, a batch task's
             * thread, preempted at nice 10 by a client's nice-0 Python, waited 5-11 ms for
             * a CPU after it was lifted to nice 0 (the fair scheduler owed the others the
             * time it had run), and the listener waited for the GIL all that while. At
             * SCHED_FIFO it runs at once, to its record boundary. */
            start_rt_boost(self, RT_BOOST_NS);
            /* The count first: a hub that sees the gate raised must see the raise counted. */
            __atomic_add_fetch(&self->watch_raises, 1, __ATOMIC_RELEASE);
            __atomic_store_n(&self->requested, 1, __ATOMIC_RELEASE);
            /* Discussion: a descriptor still readable after the pause may hold new frames
             * or old ones the listener has not read yet; raising again costs the running
             * task one visit to the hub, so the pause doubles, from 50 us up to 2 ms. */
            pause_us = pause_us ? (pause_us < 2000 ? pause_us * 2 : 2000) : 50;
        } else {
            pause_us = 0;
        }
    }
}

static int
watch_command(Gate *self, char command)
{
    ssize_t written;
    Py_BEGIN_ALLOW_THREADS
    do {
        written = write(self->wake[1], &command, 1);
    } while (written < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    return written == 1 ? 0 : -1;
}

static PyObject *
gate_watch(Gate *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "realtime", NULL};
    int fd, realtime = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|p", kwlist, &fd, &realtime))
        return NULL;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "watch() needs a file descriptor >= 0");
        return NULL;
    }
    __atomic_store_n(&self->watch_fd, fd, __ATOMIC_RELEASE);
    if (self->watching) {   /* running already: make it look at the new descriptor */
        if (watch_command(self, 'w') < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        Py_RETURN_NONE;
    }
    if (pipe2(self->wake, O_CLOEXEC) < 0)  /* not inherited by a task's child processes */
        return PyErr_SetFromErrno(PyExc_OSError);
    self->watch_realtime = realtime;
    int rc = pthread_create(&self->watcher, NULL, watch_main, self);
    if (rc != 0) {
        close(self->wake[0]);
        close(self->wake[1]);
        self->wake[0] = self->wake[1] = -1;
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->watching = 1;
    Py_RETURN_NONE;
}

static void
gate_stop_watching(Gate *self)
{
    if (!self->watching)
        return;
    self->watching = 0;
    /* Discussion: the thread reads this Gate, so it is joined before anything is freed; a
     * stop byte that cannot be written (a full or broken pipe cannot happen with one byte
     * per command) would leave it running, so that case leaks the pipe rather than close
     * it under the thread. watch() and unwatch() are called from one thread (the
     * executor's listener); they are not made safe against each other. */
    if (watch_command(self, 's') != 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->watcher, NULL);
    Py_END_ALLOW_THREADS
    close(self->wake[0]);
    close(self->wake[1]);
    self->wake[0] = self->wake[1] = -1;
    self->watch_fd = -1;
}

static PyObject *
gate_boost(Gate *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tid", "nice", "realtime", NULL};
    int tid, nice, realtime = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ii|p:boost", kwlist, &tid, &nice, &realtime))
        return NULL;
    self->boost_nice = nice;
    __atomic_store_n(&self->boost_realtime, realtime, __ATOMIC_RELEASE);
    __atomic_store_n(&self->boost_tid, tid, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *
gate_boost_now(Gate *self, PyObject *args)
{
    long long for_ns = RT_BOOST_NS;
    if (!PyArg_ParseTuple(args, "|L:boost_now", &for_ns))
        return NULL;
    if (for_ns <= 0) {
        PyErr_SetString(PyExc_ValueError, "boost_now() needs a duration > 0 ns");
        return NULL;
    }
    /* The watcher times the boost's end: it re-reads its state when woken. */
    if (start_rt_boost(self, for_ns) == 0 && self->watching && watch_command(self, 'w') < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *
gate_unwatch(Gate *self, PyObject *unused)
{
    gate_stop_watching(self);
    Py_RETURN_NONE;
}

static PyMethodDef gate_methods[] = {
    {"watch", (PyCFunction)(void (*)(void))gate_watch, METH_VARARGS | METH_KEYWORDS,
     "watch(fd, realtime=False): raise `requested` whenever fd becomes readable, from a "
     "thread that never takes the GIL, at SCHED_FIFO if `realtime` and permitted (called "
     "again: watch another fd)."},
    {"boost", (PyCFunction)(void (*)(void))gate_boost, METH_VARARGS | METH_KEYWORDS,
     "boost(tid, nice, realtime=False): as the watcher raises `requested`, it sets thread "
     "tid's nice to `nice` (0 for tid: never; dropped if not permitted) and, if `realtime`, "
     "its policy to SCHED_FIFO for at most 2 ms (dropped if not permitted)."},
    {"boost_now", (PyCFunction)gate_boost_now, METH_VARARGS,
     "boost_now(for_ns=2_000_000): put the boosted thread at SCHED_FIFO now, as a raise "
     "would, for at most for_ns, if boost(..., realtime=True) asked for it and it is "
     "permitted (a watcher, if one runs, puts it back to SCHED_OTHER then)."},
    {"unwatch", (PyCFunction)gate_unwatch, METH_NOARGS, "Stop the watcher, if it runs."},
    {NULL}
};

static int
gate_traverse(Gate *self, visitproc visit, void *arg)
{
    Py_VISIT(self->hook);
    return 0;
}

static int
gate_clear(Gate *self)
{
    Py_CLEAR(self->hook);
    return 0;
}

static void
gate_dealloc(Gate *self)
{
    PyObject_GC_UnTrack(self);
    gate_stop_watching(self);
    gate_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef gate_members[] = {
    {"requested", T_INT, offsetof(Gate, requested), 0,
     "Non-zero when the hub wants control at the next record boundary."},
    {"gil_interval", T_INT, offsetof(Gate, gil_interval), 0,
     "Release the GIL every this many records; a power of two (it is used as a mask), 0 never."},
    {"records", T_LONGLONG, offsetof(Gate, records), 0,
     "Records handed out through this gate so far."},
    {"hook", T_OBJECT, offsetof(Gate, hook), 0,
     "Called with no arguments at a record boundary when `requested` is set."},
    {"watch_raises", T_LONGLONG, offsetof(Gate, watch_raises), READONLY,
     "Times the watcher raised `requested` (see watch())."},
    {"boost_realtime", T_INT, offsetof(Gate, boost_realtime), READONLY,
     "Non-zero while the watcher puts the boosted thread at SCHED_FIFO as it raises."},
    {NULL}
};

static PyTypeObject GateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tidal.runtime._cgate.Gate",
    .tp_doc = PyDoc_STR("Gate(hook=None): the flag every GatedIterator checks per record."),
    .tp_basicsize = sizeof(Gate),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)gate_init,
    .tp_traverse = (traverseproc)gate_traverse,
    .tp_clear = (inquiry)gate_clear,
    .tp_dealloc = (destructor)gate_dealloc,
    .tp_members = gate_members,
    .tp_methods = gate_methods,
};

/* ---- GatedIterator --------------------------------------------------------------------- */

static PyObject *
gated_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *iterable;
    Gate *gate;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "GatedIterator() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO!:GatedIterator", &iterable, &GateType, &gate))
        return NULL;
    PyObject *source = PyObject_GetIter(iterable);
    if (source == NULL)
        return NULL;
    GatedIterator *self = PyObject_GC_New(GatedIterator, type);
    if (self == NULL) {
        Py_DECREF(source);
        return NULL;
    }
    self->source = source;
    Py_INCREF(gate);
    self->gate = gate;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *
gated_next(GatedIterator *self)
{
    Gate *gate = self->gate;
    PyObject *hook, *r, *item;

    if (gate == NULL || self->source == NULL)
        return NULL;            /* cleared by the cycle collector: exhausted */

    if (gate->requested) {
        hook = gate->hook;
        if (hook != NULL && hook != Py_None) {
            Py_INCREF(hook);
            r = PyObject_CallNoArgs(hook);
            Py_DECREF(hook);
            if (r == NULL)
                return NULL;        /* e.g. TaskKilled thrown into the task at this boundary */
            Py_DECREF(r);
        }
    }
    item = Py_TYPE(self->source)->tp_iternext(self->source);
    if (item != NULL && ((++gate->records) & (long long)(gate->gil_interval - 1)) == 0) {
        /* Discussion: offer the GIL to a listener thread that may be waiting for it; the
         * record is already taken, so the flag is checked at the very next boundary. */
        Py_BEGIN_ALLOW_THREADS
        Py_END_ALLOW_THREADS
    }
    return item;
}

static PyObject *
gated_length_hint(GatedIterator *self, PyObject *unused)
{
    Py_ssize_t n = PyObject_LengthHint(self->source, 0);
    if (n < 0)
        return NULL;
    return PyLong_FromSsize_t(n);
}

static int
gated_traverse(GatedIterator *self, visitproc visit, void *arg)
{
    Py_VISIT(self->source);
    Py_VISIT(self->gate);
    return 0;
}

static int
gated_clear(GatedIterator *self)
{
    Py_CLEAR(self->source);
    Py_CLEAR(self->gate);
    return 0;
}

static void
gated_dealloc(GatedIterator *self)
{
    PyObject_GC_UnTrack(self);
    gated_clear(self);
    PyObject_GC_Del(self);
}

static PyMethodDef gated_methods[] = {
    {"__length_hint__", (PyCFunction)gated_length_hint, METH_NOARGS, NULL},
    {NULL}
};

static PyTypeObject GatedIteratorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tidal.runtime._cgate.GatedIterator",
    .tp_doc = PyDoc_STR("GatedIterator(iterable, gate): iterate, stopping at the gate per record."),
    .tp_basicsize = sizeof(GatedIterator),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = gated_new,
    .tp_traverse = (traverseproc)gated_traverse,
    .tp_clear = (inquiry)gated_clear,
    .tp_dealloc = (destructor)gated_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)gated_next,
    .tp_methods = gated_methods,
};

static struct PyModuleDef cgate_module = {
    PyModuleDef_HEAD_INIT, "tidal.runtime._cgate",
    "C implementation of the record gate (see runtime/gate.py).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__cgate(void)
{
    if (PyType_Ready(&GateType) < 0 || PyType_Ready(&GatedIteratorType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&cgate_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&GateType);
    Py_INCREF(&GatedIteratorType);
    if (PyModule_AddObject(m, "Gate", (PyObject *)&GateType) < 0 ||
        PyModule_AddObject(m, "GatedIterator", (PyObject *)&GatedIteratorType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
