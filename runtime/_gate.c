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
 * (the listener has not read yet) it looks again after a growing pause, up to 2 ms. A
 * second descriptor (`also`: an executor's lane, runtime/lanes.py) is watched alike.
 * Discussion: it is a speed-up, not a guarantee: while the hub is stuck in a task, or before
 * the welcome, the listener's own poll waits on the same descriptor, and a listener that
 * reads first (it won the GIL by itself) leaves nothing for the watcher to see; commands
 * then travel through it (runtime/executor.py `_listen_loop`).
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
    int also_fd;            /* a second one, watched alike (-1: none): the lane's */
    int wake[2];            /* a pipe: a byte on it makes the watcher re-read watch_fd, or stop */
    int watching;           /* the watcher thread runs */
    int watch_realtime;     /* the watcher asks for SCHED_FIFO, as the listener does */
    volatile int boost_tid; /* a thread the watcher gives boost_nice as it raises (0: none) */
    int boost_nice;
    volatile int boost_realtime;  /* ...and SCHED_FIFO, for at most RT_BOOST_NS an arrival */
    /* The real-time boost in force, under rt_lock (the watcher, the listener and the task
     * thread all start or end one): the thread at SCHED_FIFO (0: none) and until when. */
    pthread_mutex_t rt_lock;
    int rt_tid;
    volatile long long rt_until_ns;
    pthread_t watcher;
} Gate;

typedef struct {
    PyObject_HEAD
    PyObject *source;       /* the wrapped iterator */
    Gate *gate;
} GatedIterator;

static PyTypeObject GateType;

/* ---- Gate ---------------------------------------------------------------------------- */

static PyObject *
gate_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Gate *self = (Gate *)PyType_GenericNew(type, args, kwds);
    if (self != NULL)
        pthread_mutex_init(&self->rt_lock, NULL);
    return (PyObject *)self;
}

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
    self->also_fd = -1;
    self->wake[0] = self->wake[1] = -1;
    self->watching = 0;
    self->boost_tid = 0;
    self->boost_nice = 0;
    self->boost_realtime = 0;
    self->rt_tid = 0;
    self->rt_until_ns = 0;
    return 0;
}

/* ---- the watcher ----------------------------------------------------------------------- */

/* Discussion: how long an arrival may keep the task thread at SCHED_FIFO. A record boundary
 * is microseconds away in any task that has them, and the hub puts the thread back to its
 * class's policy as it switches into the next task (runtime/realtime.py); only a task
 * inside one long C call (a 2 s sorted()) would keep it, and it must not keep a CPU from
 * every normal thread for that long: after this, the watcher puts it back itself. */
#define RT_BOOST_NS 2000000LL
/* Discussion: the boosted thread runs below the relays (the watcher, the listener,
 * ZeroMQ's I/O threads: priority 2, runtime/realtime.py), so that a boost never keeps them
 * from a CPU: the watcher must be able to end it, and the listener to read what came. */
#define TASK_RT_PRIORITY 1
#define RELAY_RT_PRIORITY 2

static long long
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The boosted thread to SCHED_FIFO for `for_ns` from now (or longer, if a boost in force
 * lasts longer); 0 if done, -1 if not asked for or not permitted. Under rt_lock. */
static int
start_rt_boost_locked(Gate *self, long long for_ns)
{
    int tid = __atomic_load_n(&self->boost_tid, __ATOMIC_ACQUIRE);
    if (tid <= 0 || !__atomic_load_n(&self->boost_realtime, __ATOMIC_ACQUIRE))
        return -1;
    /* Reset on fork: a thread or process the task starts meanwhile (a data server, a
     * BLAS pool) must not inherit SCHED_FIFO for the rest of its life. */
    struct sched_param fifo = {.sched_priority = TASK_RT_PRIORITY};
    if (sched_setscheduler((pid_t)tid, SCHED_FIFO | SCHED_RESET_ON_FORK, &fifo) != 0) {
        __atomic_store_n(&self->boost_realtime, 0, __ATOMIC_RELEASE);  /* not permitted */
        return -1;
    }
    long long until = now_ns() + for_ns;
    if (self->rt_tid != tid || until > self->rt_until_ns)
        __atomic_store_n(&self->rt_until_ns, until, __ATOMIC_RELEASE);
    self->rt_tid = tid;
    return 0;
}

/* The boosted thread back to SCHED_OTHER (its nice stays) if its boost is over at `now`,
 * or whatever its deadline if `now` is 0. Under rt_lock. */
static void
end_rt_boost_locked(Gate *self, long long now)
{
    if (self->rt_tid == 0 || (now && now < self->rt_until_ns))
        return;
    struct sched_param normal = {.sched_priority = 0};
    sched_setscheduler((pid_t)self->rt_tid, SCHED_OTHER, &normal);
    self->rt_tid = 0;
    __atomic_store_n(&self->rt_until_ns, 0, __ATOMIC_RELEASE);
}

static void
end_rt_boost(Gate *self, long long now)
{
    pthread_mutex_lock(&self->rt_lock);
    end_rt_boost_locked(self, now);
    pthread_mutex_unlock(&self->rt_lock);
}

static void *
watch_main(void *arg)
{
    Gate *self = (Gate *)arg;
    if (self->watch_realtime) {
        /* Discussion: it sleeps almost always and works for microseconds; at normal
         * priority its wake-up could wait out a busy CPU's time slice, the very delay it
         * is there to remove (runtime/realtime.py). Without the privilege it carries on. */
        struct sched_param param = {.sched_priority = RELAY_RT_PRIORITY};
        pthread_setschedparam(pthread_self(), SCHED_FIFO, &param);
    }
    long pause_us = 0;      /* 0: the watched descriptor was not readable at the last look */
    for (;;) {
        int fd = __atomic_load_n(&self->watch_fd, __ATOMIC_ACQUIRE);
        int also = __atomic_load_n(&self->also_fd, __ATOMIC_ACQUIRE);
        /* (poll ignores an entry whose descriptor is negative) */
        struct pollfd fds[3] = {{self->wake[0], POLLIN, 0}, {fd, POLLIN, 0}, {also, POLLIN, 0}};
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
        int n = ppoll(fds, pause_us == 0 ? 3 : 1, wait_ns >= 0 ? &timeout : NULL, NULL);
        if (n < 0 && errno != EINTR)
            return NULL;
        end_rt_boost(self, now_ns());
        if (n == 0 && pause_us == 0)
            continue;       /* only the boost's end was due */
        if (n > 0 && (fds[0].revents & POLLIN)) {
            char command = 0;
            if (read(self->wake[0], &command, 1) != 1 || command == 's')
                return NULL;
            if (command == 'w')
                pause_us = 0;   /* a new descriptor: look at it */
            continue;           /* 't': a boost began, its end is timed from the top */
        }
        int readable = 0;
        if (pause_us == 0 && n > 0 && (fds[1].revents & (POLLNVAL | POLLERR | POLLHUP))) {
            pause_us = 1000;    /* closed (a reconnect): wait for watch() to name the next */
            continue;
        }
        if (pause_us == 0) {
            readable = n > 0 && ((fds[1].revents | fds[2].revents) & POLLIN);
        } else {                /* the pause is over: readable (still, or again)? */
            struct pollfd look[2] = {{fd, POLLIN, 0}, {also, POLLIN, 0}};
            readable = poll(look, 2, 0) > 0 && ((look[0].revents | look[1].revents) & POLLIN);
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
             * SCHED_FIFO it runs at once, to its record boundary. Only as frames begin to
             * arrive (not at the raises that follow while they stay unread: a task in a
             * long C call must not be kept at SCHED_FIFO by them). */
            if (pause_us == 0) {
                pthread_mutex_lock(&self->rt_lock);
                start_rt_boost_locked(self, RT_BOOST_NS);
                pthread_mutex_unlock(&self->rt_lock);
            }
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

/* One command byte to the watcher's pipe (EINTR retried); 0 if written. */
static int
write_command(Gate *self, char command)
{
    ssize_t written;
    do {
        written = write(self->wake[1], &command, 1);
    } while (written < 0 && errno == EINTR);
    return written == 1 ? 0 : -1;
}

static int
watch_command(Gate *self, char command)
{
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = write_command(self, command);
    Py_END_ALLOW_THREADS
    return rc;
}

static PyObject *
gate_watch(Gate *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "realtime", "also", NULL};
    int fd, realtime = 0, also = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|pi", kwlist, &fd, &realtime, &also))
        return NULL;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "watch() needs a file descriptor >= 0");
        return NULL;
    }
    __atomic_store_n(&self->also_fd, also, __ATOMIC_RELEASE);
    __atomic_store_n(&self->watch_fd, fd, __ATOMIC_RELEASE);
    if (self->watching) {   /* running already: make it look at the new descriptor */
        if (watch_command(self, 'w') < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        Py_RETURN_NONE;
    }
    if (pipe2(self->wake, O_CLOEXEC) < 0)  /* not inherited by a task's child processes */
        return PyErr_SetFromErrno(PyExc_OSError);
    /* Non-blocking: a 't' from boost_now() that finds the pipe full finds a wake-up pending
     * (or a watcher gone), and never blocks the thread that boosts. */
    fcntl(self->wake[1], F_SETFL, fcntl(self->wake[1], F_GETFL) | O_NONBLOCK);
    self->watch_realtime = realtime;
    int rc = pthread_create(&self->watcher, NULL, watch_main, self);
    if (rc != 0) {
        close(self->wake[0]);
        close(self->wake[1]);
        self->wake[0] = self->wake[1] = -1;
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_mutex_lock(&self->rt_lock);
    self->watching = 1;
    pthread_mutex_unlock(&self->rt_lock);
    Py_RETURN_NONE;
}

static void
gate_stop_watching(Gate *self)
{
    if (!self->watching)
        return;
    pthread_mutex_lock(&self->rt_lock);  /* no boost_now() writes to the pipe from here on */
    self->watching = 0;
    pthread_mutex_unlock(&self->rt_lock);
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
    self->also_fd = -1;
    end_rt_boost(self, 0);  /* nobody would end a boost in force any more */
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
    /* Only while a watcher runs, which times the boost's end (woken to look at it: a
     * full pipe means it is woken already). Written under the lock, which unwatch() takes
     * before it closes the pipe; the lock is held for two syscalls, never with a wait. */
    pthread_mutex_lock(&self->rt_lock);
    if (self->watching && start_rt_boost_locked(self, for_ns) == 0)
        write_command(self, 't');
    pthread_mutex_unlock(&self->rt_lock);
    Py_RETURN_NONE;
}

static PyObject *
gate_unboost(Gate *self, PyObject *unused)
{
    end_rt_boost(self, 0);
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
     "watch(fd, realtime=False, also=-1): raise `requested` whenever fd (or `also`, if >= "
     "0) becomes readable, from a thread that never takes the GIL, at SCHED_FIFO if "
     "`realtime` and permitted (called again: watch other fds)."},
    {"boost", (PyCFunction)(void (*)(void))gate_boost, METH_VARARGS | METH_KEYWORDS,
     "boost(tid, nice, realtime=False): as the watcher raises `requested`, it sets thread "
     "tid's nice to `nice` (0 for tid: never; dropped if not permitted) and, if `realtime`, "
     "its policy to SCHED_FIFO for at most 2 ms (dropped if not permitted)."},
    {"boost_now", (PyCFunction)gate_boost_now, METH_VARARGS,
     "boost_now(for_ns=2_000_000): put the boosted thread at SCHED_FIFO now, as frames "
     "arriving would, for at most for_ns (or as long as a boost in force lasts), if "
     "boost(..., realtime=True) asked for it, it is permitted and a watcher runs (which "
     "puts it back to SCHED_OTHER then)."},
    {"unboost", (PyCFunction)gate_unboost, METH_NOARGS,
     "End the boost in force, if any: the thread back to SCHED_OTHER, its nice kept."},
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
    pthread_mutex_destroy(&self->rt_lock);
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
    .tp_new = gate_new,
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
