/* The serving hot path in C: classify a recvmmsg batch, and build, stamp and send replies.
 *
 * Works on the struct mmsghdr vector of a stratum1.netio.MmsgBatch (its address is passed in).
 * Python keeps every decision but one (restrict, the MRU list's entries, anything but a
 * plain client request); this module does the per-datagram arithmetic that costs Python
 * (numpy included) about 2 us per reply, and the rate limits of requests from addresses the
 * MRU list already holds:
 *
 *   scan(hdrs, count, ok_first, want_lists)
 *       -> (mask, rows, versions, rx_ns, starts, senders)
 *          mask[i] = 1 for a plain client request:
 *          48 bytes, a first byte that ok_first allows (mode 3, a version we answer), and a
 *          software receive stamp; rows/versions/rx_ns list those slots, starts the
 *          positions in rows where the sender (address and port) changes, senders the
 *          address tuple of each of those runs (the lists are None unless want_lists).
 *   reply_each(fd, hdrs, count, mask, by_first, by_poll, word1, word2)
 *       -> (replied, sent, failed, version4, version1)   turns every masked request into
 *          its reply in place (word 0 = by_first[byte 0] | by_poll[byte 2], words 1-2 given,
 *          origin = the request's transmit, receive = the kernel stamp rounded) and sends
 *          each alone, its transmit stamp read from CLOCK_REALTIME just before its own send
 *          and truncated, so never later than the send.
 *   reset(hdrs, count, bufsize, namesize, ctrlsize)   the first count slots ready to receive
 *          again (what recvmmsg and reply_each changed).
 *   observe_runs(...)   stratum1.ratelimit.RateLimiter.observe_current_runs: the rate limits
 *          of runs of requests from addresses whose MRU entries are current.
 *
 * A destination that refuses is skipped; a full send buffer (EAGAIN, ENOBUFS) sheds the rest.
 * Optional: without it stratum1 does the same in Python and numpy.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define NTP_UNIX_OFFSET_S 2208988800ULL
#define NS_PER_S 1000000000ULL
#define HEADER_LEN 48
#define TRANSMIT_OFFSET 40
#ifndef SO_TIMESTAMPING_OLD
#define SO_TIMESTAMPING_OLD 37
#endif
#ifndef SO_TIMESTAMPING_NEW
#define SO_TIMESTAMPING_NEW 65
#endif

static inline void put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static inline uint64_t ntp64_truncated(const struct timespec *ts)
{
    uint64_t seconds = (uint64_t)ts->tv_sec + NTP_UNIX_OFFSET_S;
    uint64_t fraction = ((uint64_t)ts->tv_nsec << 32) / NS_PER_S;
    return (seconds << 32) | fraction;
}

static inline uint64_t ntp64_rounded(int64_t sec, int64_t nsec)
{
    uint64_t fraction = (((uint64_t)nsec << 32) + NS_PER_S / 2) / NS_PER_S;
    return (((uint64_t)sec + NTP_UNIX_OFFSET_S) << 32) + fraction; /* a carry is exact */
}

/* The software receive stamp of a received message (first timespec of SO_TIMESTAMPING,
 * either layout), or 0 when it has none. */
static int rx_stamp(struct msghdr *msg, int64_t *sec, int64_t *nsec)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET)
            continue;
        if (c->cmsg_type == SO_TIMESTAMPING_OLD &&
            c->cmsg_len >= CMSG_LEN(3 * sizeof(struct timespec))) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof ts);
            *sec = ts.tv_sec;
            *nsec = ts.tv_nsec;
        } else if (c->cmsg_type == SO_TIMESTAMPING_NEW &&
                   c->cmsg_len >= CMSG_LEN(6 * sizeof(int64_t))) {
            int64_t ts[2];
            memcpy(ts, CMSG_DATA(c), sizeof ts);
            *sec = ts[0];
            *nsec = ts[1];
        } else {
            continue;
        }
        return (*sec != 0 || *nsec != 0) && *nsec >= 0 && *nsec < (int64_t)NS_PER_S;
    }
    return 0;
}

/* The sender of a received message as the socket module gives it: (host, port) for IPv4,
 * (host, port, flowinfo, scope_id) for IPv6; ("", 0) for anything else (no host: refused). */
static PyObject *sender_tuple(const struct msghdr *msg)
{
    char host[INET6_ADDRSTRLEN];
    const struct sockaddr *sa = msg->msg_name;
    if (msg->msg_namelen >= sizeof(struct sockaddr_in) && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = msg->msg_name;
        if (inet_ntop(AF_INET, &in->sin_addr, host, sizeof host) != NULL)
            return Py_BuildValue("(si)", host, (int)ntohs(in->sin_port));
    } else if (msg->msg_namelen >= sizeof(struct sockaddr_in6) && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = msg->msg_name;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host) != NULL)
            return Py_BuildValue("(siII)", host, (int)ntohs(in6->sin6_port),
                                 (unsigned int)ntohl(in6->sin6_flowinfo),
                                 (unsigned int)in6->sin6_scope_id);
    }
    return Py_BuildValue("(si)", "", 0);
}

/* Append the sender of msg to list; 0 on success. */
static int append_sender(PyObject *list, const struct msghdr *msg)
{
    PyObject *sender = sender_tuple(msg);
    int failed = sender == NULL || PyList_Append(list, sender) < 0;
    Py_XDECREF(sender);
    return failed ? -1 : 0;
}

static struct mmsghdr *hdrs_from(unsigned long long address)
{
    return (struct mmsghdr *)(uintptr_t)address;
}

static int check_count(Py_ssize_t count)
{
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "count must not be negative");
        return 0;
    }
    return 1;
}

/* Send one prepared reply with a fresh transmit timestamp (bytes 40-47).
 * Returns 1 sent, 0 refused, -1 the send buffer is full. */
static int stamp_and_send(int fd, struct mmsghdr *m)
{
    struct iovec *iov = m->msg_hdr.msg_iov;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    put_be64((unsigned char *)iov[0].iov_base + TRANSMIT_OFFSET, ntp64_truncated(&ts));
    if (sendmsg(fd, &m->msg_hdr, 0) >= 0)
        return 1;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == EINTR)
        return -1;
    return 0;
}

static PyObject *scan(PyObject *self, PyObject *args)
{
    unsigned long long address;
    Py_ssize_t count;
    Py_buffer ok;
    int want_lists;
    (void)self;
    if (!PyArg_ParseTuple(args, "Kny*p", &address, &count, &ok, &want_lists))
        return NULL;
    PyObject *mask = NULL, *rows = NULL, *versions = NULL, *stamps = NULL, *starts = NULL;
    PyObject *senders = NULL;
    PyObject *result = NULL;
    struct msghdr *previous = NULL;
    if (!check_count(count))
        goto done;
    if (ok.len != 256) {
        PyErr_SetString(PyExc_ValueError, "ok_first must hold 256 bytes");
        goto done;
    }
    mask = PyByteArray_FromStringAndSize(NULL, count);
    if (mask == NULL)
        goto done;
    if (want_lists) {
        rows = PyList_New(0);
        versions = PyList_New(0);
        stamps = PyList_New(0);
        starts = PyList_New(0);
        senders = PyList_New(0);
        if (rows == NULL || versions == NULL || stamps == NULL || starts == NULL ||
            senders == NULL)
            goto done;
    }
    char *flags = PyByteArray_AS_STRING(mask);
    const unsigned char *allowed = ok.buf;
    struct mmsghdr *hdrs = hdrs_from(address);
    for (Py_ssize_t i = 0; i < count; i++) {
        struct mmsghdr *m = &hdrs[i];
        const unsigned char *data = m->msg_hdr.msg_iov[0].iov_base;
        int64_t sec = 0, nsec = 0;
        int fast = m->msg_len == HEADER_LEN && !(m->msg_hdr.msg_flags & MSG_TRUNC) &&
                   allowed[data[0]] && rx_stamp(&m->msg_hdr, &sec, &nsec);
        flags[i] = (char)fast;
        if (!fast || !want_lists)
            continue;
        struct msghdr *msg = &m->msg_hdr;
        if (previous == NULL || previous->msg_namelen != msg->msg_namelen ||
            memcmp(previous->msg_name, msg->msg_name, msg->msg_namelen) != 0) {
            PyObject *at = PyLong_FromSsize_t(PyList_GET_SIZE(rows));
            int failed = at == NULL || PyList_Append(starts, at) < 0;
            Py_XDECREF(at);
            if (failed || (previous != NULL && append_sender(senders, previous) < 0))
                goto done;
        }
        previous = msg;
        PyObject *row = PyLong_FromSsize_t(i);
        PyObject *version = PyLong_FromLong((data[0] >> 3) & 0x07);
        PyObject *stamp = PyLong_FromLongLong(sec * (int64_t)NS_PER_S + nsec);
        int bad = row == NULL || version == NULL || stamp == NULL ||
                  PyList_Append(rows, row) < 0 || PyList_Append(versions, version) < 0 ||
                  PyList_Append(stamps, stamp) < 0;
        Py_XDECREF(row);
        Py_XDECREF(version);
        Py_XDECREF(stamp);
        if (bad)
            goto done;
    }
    if (want_lists) {
        if (previous != NULL && append_sender(senders, previous) < 0)
            goto done;
        result = Py_BuildValue("OOOOOO", mask, rows, versions, stamps, starts, senders);
    } else {
        result = Py_BuildValue("OOOOOO", mask, Py_None, Py_None, Py_None, Py_None, Py_None);
    }
done:
    PyBuffer_Release(&ok);
    Py_XDECREF(mask);
    Py_XDECREF(rows);
    Py_XDECREF(versions);
    Py_XDECREF(stamps);
    Py_XDECREF(starts);
    Py_XDECREF(senders);
    return result;
}

static PyObject *reply_each(PyObject *self, PyObject *args)
{
    int fd;
    unsigned long long address, word1, word2;
    Py_ssize_t count;
    Py_buffer mask, by_first, by_poll;
    (void)self;
    if (!PyArg_ParseTuple(args, "iKny*y*y*KK", &fd, &address, &count, &mask, &by_first,
                          &by_poll, &word1, &word2))
        return NULL;
    PyObject *result = NULL;
    if (!check_count(count))
        goto done;
    if (mask.len < count || by_first.len != 256 * 8 || by_poll.len != 256 * 8) {
        PyErr_SetString(PyExc_ValueError, "mask shorter than count, or tables not 256 x 8 bytes");
        goto done;
    }
    const unsigned char *take = mask.buf;
    const uint64_t *first_words = by_first.buf, *poll_words = by_poll.buf;
    struct mmsghdr *hdrs = hdrs_from(address);
    Py_ssize_t replied = 0, sent = 0, version4 = 0, version1 = 0;
    int full = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!take[i])
            continue;
        struct mmsghdr *m = &hdrs[i];
        unsigned char *buf = m->msg_hdr.msg_iov[0].iov_base;
        int64_t sec = 0, nsec = 0;
        if (m->msg_len != HEADER_LEN || !rx_stamp(&m->msg_hdr, &sec, &nsec))
            continue; /* scan would not have chosen it: counted as failed */
        replied++;
        int version = (buf[0] >> 3) & 0x07;
        version4 += version == 4;
        version1 += version == 1;
        if (full)
            continue; /* counted, not sent: the send buffer is full */
        uint64_t head = first_words[buf[0]] | poll_words[buf[2]];
        memcpy(buf + 24, buf + TRANSMIT_OFFSET, 8); /* origin: the request's transmit, verbatim */
        put_be64(buf, head);
        put_be64(buf + 8, word1);
        put_be64(buf + 16, word2);
        put_be64(buf + 32, ntp64_rounded(sec, nsec));
        m->msg_hdr.msg_iov[0].iov_len = HEADER_LEN;
        m->msg_hdr.msg_controllen = 0;
        int got = stamp_and_send(fd, m);
        if (got > 0)
            sent++;
        else if (got < 0)
            full = 1;
    }
    result = Py_BuildValue("nnnnn", replied, sent, replied - sent, version4, version1);
done:
    PyBuffer_Release(&mask);
    PyBuffer_Release(&by_first);
    PyBuffer_Release(&by_poll);
    return result;
}

/* Make the first count slots ready for the next recvmmsg: buffer, name and control lengths. */
static PyObject *reset(PyObject *self, PyObject *args)
{
    unsigned long long address;
    Py_ssize_t count, bufsize, namesize, ctrlsize;
    (void)self;
    if (!PyArg_ParseTuple(args, "Knnnn", &address, &count, &bufsize, &namesize, &ctrlsize))
        return NULL;
    if (!check_count(count))
        return NULL;
    struct mmsghdr *hdrs = hdrs_from(address);
    for (Py_ssize_t i = 0; i < count; i++) {
        hdrs[i].msg_hdr.msg_iov[0].iov_len = (size_t)bufsize;
        hdrs[i].msg_hdr.msg_namelen = (socklen_t)namesize;
        hdrs[i].msg_hdr.msg_controllen = (size_t)ctrlsize;
    }
    Py_RETURN_NONE;
}

/* -- the rate limiter's steady state (stratum1.ratelimit.RateLimiter.observe_run) -------- */

#define MODE_CLIENT 3

static PyObject *name_generation, *name_from_ntp_port, *name_restrict_flags, *name_last_ns,
    *name_leak, *name_flags, *name_port, *name_count, *name_mode, *name_version;

static int get_ll(PyObject *obj, PyObject *name, long long *out)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int set_ll(PyObject *obj, PyObject *name, long long v)
{
    PyObject *value = PyLong_FromLongLong(v);
    if (value == NULL)
        return -1;
    int failed = PyObject_SetAttr(obj, name, value);
    Py_DECREF(value);
    return failed;
}

static int item_ll(PyObject *list, Py_ssize_t i, long long *out)
{
    *out = PyLong_AsLongLong(PyList_GET_ITEM(list, i));
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* One run of time requests from an address whose MRU entry is current: ntpd's rate limits
 * applied request by request, exactly as RateLimiter.observe_run does. */
static int observe_one_run(PyObject *entry, PyObject *host, long long port, PyObject *move,
                           PyObject *versions, PyObject *times, Py_ssize_t start,
                           Py_ssize_t stop, long long flags, const long long *p,
                           long long *over, long long *final_flags, PyObject *limited)
{
    /* p: head, limit, minimum, limited_bit, kod_bit, douse */
    long long head = p[0], limit = p[1], minimum = p[2], limited_bit = p[3], kod_bit = p[4];
    long long douse = flags & p[5], nokod = flags & ~kod_bit;
    long long last, leak, entry_flags, count, version;
    if (get_ll(entry, name_last_ns, &last) < 0 || get_ll(entry, name_leak, &leak) < 0 ||
        get_ll(entry, name_flags, &entry_flags) < 0 || get_ll(entry, name_count, &count) < 0 ||
        item_ll(versions, stop - 1, &version) < 0)
        return -1;
    for (Py_ssize_t k = start; k < stop; k++) {
        long long now;
        if (item_ll(times, k, &now) < 0)
            return -1;
        /* Whole seconds, rounded; a step backwards is no headway (clamped, so C's division
         * toward zero and Python's floor agree). */
        long long interval = (now - last + (long long)(NS_PER_S / 2)) / (long long)NS_PER_S;
        if (interval < 0)
            interval = 0;
        last = now;
        leak -= interval;
        if (leak < 0)
            leak = 0;
        if (interval + 1 >= minimum && leak + head < limit) {
            leak += head - 2;
            entry_flags = douse;
            continue;
        }
        if (leak < limit) {
            leak = limit + head;
            entry_flags = flags;
        } else {
            entry_flags = nokod;
        }
        (*over)++;
        if (flags & limited_bit) {
            PyObject *pair = Py_BuildValue("(nL)", k, entry_flags);
            int failed = pair == NULL || PyList_Append(limited, pair) < 0;
            Py_XDECREF(pair);
            if (failed)
                return -1;
        }
    }
    if (set_ll(entry, name_last_ns, last) < 0 || set_ll(entry, name_leak, leak) < 0 ||
        set_ll(entry, name_flags, entry_flags) < 0 || set_ll(entry, name_port, port) < 0 ||
        set_ll(entry, name_count, count + (stop - start)) < 0 ||
        set_ll(entry, name_mode, MODE_CLIENT) < 0 || set_ll(entry, name_version, version) < 0)
        return -1;
    PyObject *moved = PyObject_CallOneArg(move, host);
    if (moved == NULL)
        return -1;
    Py_DECREF(moved);
    *final_flags = entry_flags;
    return 0;
}

static PyObject *observe_runs(PyObject *self, PyObject *args)
{
    PyObject *entries, *move, *senders, *starts, *versions, *times;
    long long generation, p[6], refused;
    int ntpport;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OO!O!O!O!LpLLLLLLL", &PyDict_Type, &entries, &move,
                          &PyList_Type, &senders, &PyList_Type, &starts, &PyList_Type,
                          &versions, &PyList_Type, &times, &generation, &ntpport, &p[0],
                          &p[1], &p[2], &refused, &p[3], &p[4], &p[5]))
        return NULL;
    Py_ssize_t runs = PyList_GET_SIZE(starts), total = PyList_GET_SIZE(times);
    if (PyList_GET_SIZE(senders) != runs || PyList_GET_SIZE(versions) != total) {
        PyErr_SetString(PyExc_ValueError, "senders/starts or versions/times differ in length");
        return NULL;
    }
    PyObject *limited = PyList_New(0);
    if (limited == NULL)
        return NULL;
    long long checked = 0, over = 0, final_flags = -1;
    Py_ssize_t j = 0;
    for (; j < runs; j++) {
        long long start, stop = total;
        if (item_ll(starts, j, &start) < 0 || (j + 1 < runs && item_ll(starts, j + 1, &stop) < 0))
            goto fail;
        if (start < 0 || stop > total || start >= stop) {
            PyErr_SetString(PyExc_ValueError, "starts must rise within the batch");
            goto fail;
        }
        PyObject *sender = PyList_GET_ITEM(senders, j);
        if (!PyTuple_Check(sender) || PyTuple_GET_SIZE(sender) < 2) {
            PyErr_SetString(PyExc_TypeError, "a sender is a (host, port, ...) tuple");
            goto fail;
        }
        PyObject *host = PyTuple_GET_ITEM(sender, 0);
        long long port = PyLong_AsLongLong(PyTuple_GET_ITEM(sender, 1));
        if (port == -1 && PyErr_Occurred())
            goto fail;
        PyObject *entry = PyDict_GetItemWithError(entries, host);
        if (entry == NULL) {
            if (PyErr_Occurred())
                goto fail;
            break; /* a new address: Python makes its entry */
        }
        Py_INCREF(entry);
        long long entry_generation, from_ntp_port = 0, flags;
        int ok = get_ll(entry, name_generation, &entry_generation) == 0 &&
                 (!ntpport || get_ll(entry, name_from_ntp_port, &from_ntp_port) == 0) &&
                 get_ll(entry, name_restrict_flags, &flags) == 0;
        if (!ok) {
            Py_DECREF(entry);
            goto fail;
        }
        /* A stale table lookup, flags decided otherwise (refused, per request) or a version
         * outside 1-4 (which the per-request check refuses or counts): Python. */
        int plain = 1;
        for (Py_ssize_t k = (Py_ssize_t)start; k < (Py_ssize_t)stop && plain; k++) {
            long long version;
            if (item_ll(versions, k, &version) < 0) {
                Py_DECREF(entry);
                goto fail;
            }
            plain = version >= 1 && version <= 4;
        }
        if (!plain || entry_generation != generation ||
            (ntpport && (port == 123) != !!from_ntp_port) || (flags & refused)) {
            Py_DECREF(entry);
            break;
        }
        int failed = observe_one_run(entry, host, port, move, versions, times, (Py_ssize_t)start,
                                     (Py_ssize_t)stop, flags, p, &over, &final_flags, limited);
        Py_DECREF(entry);
        if (failed)
            goto fail;
        checked += stop - start;
    }
    PyObject *result = Py_BuildValue("(nLLLO)", j, checked, over, final_flags, limited);
    Py_DECREF(limited);
    return result;
fail:
    Py_DECREF(limited);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(hdrs, count, ok_first, want_lists) -> (mask, rows, versions, rx_ns, starts, senders)"},
    {"reply_each", reply_each, METH_VARARGS,
     "reply_each(fd, hdrs, count, mask, by_first, by_poll, word1, word2)"
     " -> (replied, sent, failed, version4, version1)"},
    {"reset", reset, METH_VARARGS,
     "reset(hdrs, count, bufsize, namesize, ctrlsize): slots ready for the next recvmmsg"},
    {"observe_runs", observe_runs, METH_VARARGS,
     "observe_runs(entries, move_to_end, senders, starts, versions, times, generation,"
     " ntpport, head, limit, minimum, refused, limited_bit, kod_bit, douse)"
     " -> (runs_done, checked, over_limit, last_flags, limited)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hotpath",
    "The serving hot path: classify a batch, build, stamp and send replies.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hotpath(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&name_generation, "generation"}, {&name_from_ntp_port, "from_ntp_port"},
        {&name_restrict_flags, "restrict_flags"}, {&name_last_ns, "last_ns"},
        {&name_leak, "leak"}, {&name_flags, "flags"}, {&name_port, "port"},
        {&name_count, "count"}, {&name_mode, "mode"}, {&name_version, "version"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return NULL;
    }
    return PyModule_Create(&module);
}
