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
 *   serve_known(...)   scan + observe_runs + reply_each in one call, for as long as the runs
 *          of plain requests come from such addresses; mask[i] = 2 marks the requests left
 *          for Python (from the first run it could not decide), 0 those over the limits
 *          (listed with their flags) or not plain, 1 those answered.
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

/* A plain client request: 48 bytes, a first byte that allowed[] lets through (mode 3, a
 * version we answer) and a software receive stamp, returned in *sec, *nsec. */
static int plain_request(struct mmsghdr *m, const unsigned char *allowed, int64_t *sec,
                         int64_t *nsec)
{
    const unsigned char *data = m->msg_hdr.msg_iov[0].iov_base;
    return m->msg_len == HEADER_LEN && !(m->msg_hdr.msg_flags & MSG_TRUNC) &&
           allowed[data[0]] && rx_stamp(&m->msg_hdr, sec, nsec);
}

static int same_sender(const struct msghdr *a, const struct msghdr *b)
{
    return a->msg_namelen == b->msg_namelen &&
           memcmp(a->msg_name, b->msg_name, a->msg_namelen) == 0;
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
        int fast = plain_request(m, allowed, &sec, &nsec);
        flags[i] = (char)fast;
        if (!fast || !want_lists)
            continue;
        struct msghdr *msg = &m->msg_hdr;
        if (previous == NULL || !same_sender(previous, msg)) {
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

/* What replying to a batch's chosen requests did. */
struct replies {
    Py_ssize_t replied, sent, version4, version1;
};

/* Turn every request i with take[i] == 1 into its reply in place and send each alone with a
 * fresh transmit stamp (see reply_each). */
static void send_replies(int fd, struct mmsghdr *hdrs, Py_ssize_t count,
                         const unsigned char *take, const uint64_t *first_words,
                         const uint64_t *poll_words, uint64_t word1, uint64_t word2,
                         struct replies *out)
{
    int full = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (take[i] != 1)
            continue;
        struct mmsghdr *m = &hdrs[i];
        unsigned char *buf = m->msg_hdr.msg_iov[0].iov_base;
        int64_t sec = 0, nsec = 0;
        if (m->msg_len != HEADER_LEN || !rx_stamp(&m->msg_hdr, &sec, &nsec))
            continue; /* scan would not have chosen it: counted as failed */
        out->replied++;
        int version = (buf[0] >> 3) & 0x07;
        out->version4 += version == 4;
        out->version1 += version == 1;
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
            out->sent++;
        else if (got < 0)
            full = 1;
    }
}

static int check_tables(Py_ssize_t count, const Py_buffer *mask, const Py_buffer *by_first,
                        const Py_buffer *by_poll)
{
    if ((mask != NULL && mask->len < count) || by_first->len != 256 * 8 ||
        by_poll->len != 256 * 8) {
        PyErr_SetString(PyExc_ValueError, "mask shorter than count, or tables not 256 x 8 bytes");
        return 0;
    }
    return 1;
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
    if (!check_count(count) || !check_tables(count, &mask, &by_first, &by_poll))
        goto done;
    struct replies out = {0, 0, 0, 0};
    send_replies(fd, hdrs_from(address), count, mask.buf, by_first.buf, by_poll.buf, word1,
                 word2, &out);
    result = Py_BuildValue("nnnnn", out.replied, out.sent, out.replied - out.sent,
                           out.version4, out.version1);
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

/* The limiter's parameters, as observe_runs and serve_known take them. */
struct limits {
    long long generation, head, limit, minimum, defer, limited_bit, kod_bit, douse;
    int ntpport;
};

/* One run of n time requests (receive times and versions in arrival order, ids naming them in
 * what is reported) from an address whose MRU entry is current: ntpd's rate limits applied
 * request by request, exactly as RateLimiter.observe_run does. Requests over the limits add
 * to *over and, where flags carry LIMITED, (id, flags) to limited. */
static int observe_one_run(PyObject *entry, PyObject *host, long long port, PyObject *move,
                           const long long *times, const long long *versions,
                           const Py_ssize_t *ids, Py_ssize_t n, long long flags,
                           const struct limits *lim, long long *over, long long *final_flags,
                           PyObject *limited)
{
    long long head = lim->head, limit = lim->limit, minimum = lim->minimum;
    long long douse = flags & lim->douse, nokod = flags & ~lim->kod_bit;
    long long last, leak, entry_flags, count;
    if (get_ll(entry, name_last_ns, &last) < 0 || get_ll(entry, name_leak, &leak) < 0 ||
        get_ll(entry, name_flags, &entry_flags) < 0 || get_ll(entry, name_count, &count) < 0)
        return -1;
    for (Py_ssize_t k = 0; k < n; k++) {
        long long now = times[k];
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
        if (flags & lim->limited_bit) {
            PyObject *pair = Py_BuildValue("(nL)", ids[k], entry_flags);
            int failed = pair == NULL || PyList_Append(limited, pair) < 0;
            Py_XDECREF(pair);
            if (failed)
                return -1;
        }
    }
    if (set_ll(entry, name_last_ns, last) < 0 || set_ll(entry, name_leak, leak) < 0 ||
        set_ll(entry, name_flags, entry_flags) < 0 || set_ll(entry, name_port, port) < 0 ||
        set_ll(entry, name_count, count + n) < 0 || set_ll(entry, name_mode, MODE_CLIENT) < 0 ||
        set_ll(entry, name_version, versions[n - 1]) < 0)
        return -1;
    PyObject *moved = PyObject_CallOneArg(move, host);
    if (moved == NULL)
        return -1;
    Py_DECREF(moved);
    *final_flags = entry_flags;
    return 0;
}

/* The MRU entry of host if this run may be decided here: it exists, its cached restrict flags
 * are current (table generation; port-123-ness when the table has ntpport entries) and carry
 * none of the deferred bits, and every version is 1-4. Returns 1 with a new reference in
 * *entry and the flags in *flags, 0 if Python must decide, -1 on error. */
static int usable_entry(PyObject *entries, PyObject *host, long long port,
                        const long long *versions, Py_ssize_t n, const struct limits *lim,
                        PyObject **entry, long long *flags)
{
    for (Py_ssize_t k = 0; k < n; k++) {
        if (versions[k] < 1 || versions[k] > 4)
            return 0;
    }
    PyObject *found = PyDict_GetItemWithError(entries, host);
    if (found == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(found);
    long long generation, from_ntp_port = 0;
    if (get_ll(found, name_generation, &generation) < 0 ||
        (lim->ntpport && get_ll(found, name_from_ntp_port, &from_ntp_port) < 0) ||
        get_ll(found, name_restrict_flags, flags) < 0) {
        Py_DECREF(found);
        return -1;
    }
    if (generation != lim->generation || (lim->ntpport && (port == 123) != !!from_ntp_port) ||
        (*flags & lim->defer)) {
        Py_DECREF(found);
        return 0;
    }
    *entry = found;
    return 1;
}

static PyObject *observe_runs(PyObject *self, PyObject *args)
{
    PyObject *entries, *move, *senders, *starts, *versions, *times;
    struct limits lim;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!OLpLLLLLLL", &PyList_Type, &senders, &PyList_Type,
                          &starts, &PyList_Type, &versions, &PyList_Type, &times,
                          &PyDict_Type, &entries, &move, &lim.generation, &lim.ntpport,
                          &lim.head, &lim.limit, &lim.minimum, &lim.defer, &lim.limited_bit,
                          &lim.kod_bit, &lim.douse))
        return NULL;
    Py_ssize_t runs = PyList_GET_SIZE(starts), total = PyList_GET_SIZE(times);
    if (PyList_GET_SIZE(senders) != runs || PyList_GET_SIZE(versions) != total) {
        PyErr_SetString(PyExc_ValueError, "senders/starts or versions/times differ in length");
        return NULL;
    }
    long long *arrays = PyMem_Malloc(sizeof(long long) * 2 * (size_t)(total ? total : 1));
    Py_ssize_t *ids = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(total ? total : 1));
    PyObject *limited = PyList_New(0);
    if (arrays == NULL || ids == NULL || limited == NULL) {
        PyMem_Free(arrays);
        PyMem_Free(ids);
        Py_XDECREF(limited);
        return PyErr_NoMemory();
    }
    long long *all_times = arrays, *all_versions = arrays + total;
    for (Py_ssize_t k = 0; k < total; k++) {
        ids[k] = k;
        if (item_ll(times, k, &all_times[k]) < 0 || item_ll(versions, k, &all_versions[k]) < 0)
            goto fail;
    }
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
        PyObject *entry = NULL;
        long long flags = 0;
        Py_ssize_t n = (Py_ssize_t)(stop - start);
        int usable = usable_entry(entries, host, port, all_versions + start, n, &lim, &entry,
                                  &flags);
        if (usable < 0)
            goto fail;
        if (usable == 0)
            break; /* Python decides from here on */
        int failed = observe_one_run(entry, host, port, move, all_times + start,
                                     all_versions + start, ids + start, n, flags, &lim, &over,
                                     &final_flags, limited);
        Py_DECREF(entry);
        if (failed)
            goto fail;
        checked += n;
    }
    PyMem_Free(arrays);
    PyMem_Free(ids);
    PyObject *result = Py_BuildValue("(nLLLO)", j, checked, over, final_flags, limited);
    Py_DECREF(limited);
    return result;
fail:
    PyMem_Free(arrays);
    PyMem_Free(ids);
    Py_DECREF(limited);
    return NULL;
}

/* A batch's plain client requests from senders whose MRU entries are current, decided and
 * answered in one call: no Python runs between their receive and their sends. */
static PyObject *serve_known(PyObject *self, PyObject *args)
{
    int fd;
    unsigned long long address, word1, word2;
    Py_ssize_t count;
    Py_buffer ok, by_first, by_poll;
    PyObject *entries, *move;
    struct limits lim;
    (void)self;
    if (!PyArg_ParseTuple(args, "iKny*y*y*KKO!OLpLLLLLLL", &fd, &address, &count, &ok,
                          &by_first, &by_poll, &word1, &word2, &PyDict_Type, &entries, &move,
                          &lim.generation, &lim.ntpport, &lim.head, &lim.limit, &lim.minimum,
                          &lim.defer, &lim.limited_bit, &lim.kod_bit, &lim.douse))
        return NULL;
    PyObject *result = NULL, *mask = NULL, *limited = NULL;
    long long *times = NULL, *versions = NULL;
    Py_ssize_t *rows = NULL;
    if (!check_count(count) || !check_tables(count, NULL, &by_first, &by_poll))
        goto done;
    if (ok.len != 256) {
        PyErr_SetString(PyExc_ValueError, "ok_first must hold 256 bytes");
        goto done;
    }
    size_t room = (size_t)(count ? count : 1);
    mask = PyByteArray_FromStringAndSize(NULL, count);
    limited = PyList_New(0);
    times = PyMem_Malloc(sizeof *times * room);
    versions = PyMem_Malloc(sizeof *versions * room);
    rows = PyMem_Malloc(sizeof *rows * room);
    if (mask == NULL || limited == NULL || times == NULL || versions == NULL || rows == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    unsigned char *take = (unsigned char *)PyByteArray_AS_STRING(mask);
    struct mmsghdr *hdrs = hdrs_from(address);
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t sec = 0, nsec = 0;
        take[i] = (unsigned char)plain_request(&hdrs[i], ok.buf, &sec, &nsec);
        if (!take[i])
            continue;
        const unsigned char *data = hdrs[i].msg_hdr.msg_iov[0].iov_base;
        rows[n] = i;
        times[n] = sec * (int64_t)NS_PER_S + nsec;
        versions[n] = (data[0] >> 3) & 0x07;
        n++;
    }
    long long checked = 0, over = 0, final_flags = -1;
    for (Py_ssize_t r = 0; r < n;) {
        const struct msghdr *first = &hdrs[rows[r]].msg_hdr;
        Py_ssize_t e = r + 1;
        while (e < n && same_sender(first, &hdrs[rows[e]].msg_hdr))
            e++;
        PyObject *sender = sender_tuple(first);
        if (sender == NULL)
            goto done;
        PyObject *host = PyTuple_GET_ITEM(sender, 0);
        long long port = PyLong_AsLongLong(PyTuple_GET_ITEM(sender, 1));
        PyObject *entry = NULL;
        long long flags = 0;
        int usable = usable_entry(entries, host, port, versions + r, e - r, &lim, &entry, &flags);
        if (usable == 1) {
            int failed = observe_one_run(entry, host, port, move, times + r, versions + r,
                                         rows + r, e - r, flags, &lim, &over, &final_flags,
                                         limited);
            Py_DECREF(entry);
            usable = failed ? -1 : 1;
        }
        Py_DECREF(sender);
        if (usable < 0)
            goto done;
        if (usable == 0) {
            for (Py_ssize_t k = r; k < n; k++)
                take[rows[k]] = 2; /* Python decides these, in this order */
            break;
        }
        checked += e - r;
        r = e;
    }
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(limited); k++) {
        Py_ssize_t slot = PyLong_AsSsize_t(PyTuple_GET_ITEM(PyList_GET_ITEM(limited, k), 0));
        if (slot >= 0 && slot < count)
            take[slot] = 0; /* over the limits: Python sends the KoD or drops it */
    }
    struct replies out = {0, 0, 0, 0};
    send_replies(fd, hdrs, count, take, by_first.buf, by_poll.buf, word1, word2, &out);
    result = Py_BuildValue("(OLLLOnnnnn)", mask, checked, over, final_flags, limited,
                           out.replied, out.sent, out.replied - out.sent, out.version4,
                           out.version1);
done:
    PyBuffer_Release(&ok);
    PyBuffer_Release(&by_first);
    PyBuffer_Release(&by_poll);
    Py_XDECREF(mask);
    Py_XDECREF(limited);
    PyMem_Free(times);
    PyMem_Free(versions);
    PyMem_Free(rows);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(hdrs, count, ok_first, want_lists) -> (mask, rows, versions, rx_ns, starts, senders)"},
    {"reply_each", reply_each, METH_VARARGS,
     "reply_each(fd, hdrs, count, mask, by_first, by_poll, word1, word2)"
     " -> (replied, sent, failed, version4, version1)"},
    {"reset", reset, METH_VARARGS,
     "reset(hdrs, count, bufsize, namesize, ctrlsize): slots ready for the next recvmmsg"},
    {"serve_known", serve_known, METH_VARARGS,
     "serve_known(fd, hdrs, count, ok_first, by_first, by_poll, word1, word2, entries,"
     " move_to_end, generation, ntpport, head, limit, minimum, defer, limited_bit, kod_bit,"
     " douse) -> (mask, checked, over_limit, last_flags, limited, replied, sent, failed,"
     " version4, version1)"},
    {"observe_runs", observe_runs, METH_VARARGS,
     "observe_runs(senders, starts, versions, times, entries, move_to_end, generation,"
     " ntpport, head, limit, minimum, defer, limited_bit, kod_bit, douse)"
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
