/* The serving hot path in C: classify a recvmmsg batch, and build, stamp and send replies.
 *
 * Works on the struct mmsghdr vector of a stratum1.netio.MmsgBatch (its address is passed in).
 * Python keeps every decision that needs state (restrict, rate limiting, the MRU list,
 * anything but a plain client request); this module does the per-datagram arithmetic that
 * costs Python (numpy included) about 2 us per reply:
 *
 *   scan(hdrs, count, ok_first, want_lists)
 *       -> (mask, rows, versions, rx_ns, starts, senders)
 *          mask[i] = 1 for a plain client request:
 *          48 bytes, a first byte that ok_first allows (mode 3, a version we answer), and a
 *          software receive stamp; rows/versions/rx_ns list those slots, starts the
 *          positions in rows where a run of requests from one client begins: a new host
 *          (address without port), or a change between port 123 and any other; senders the
 *          address tuple of each run's last request (whose port the MRU entry keeps). The
 *          lists are None unless want_lists.
 *   reply_each(fd, hdrs, count, mask, by_first, by_poll, word1, word2)
 *       -> (replied, sent, failed, version4, version1)   turns every masked request into
 *          its reply in place (word 0 = by_first[byte 0] | by_poll[byte 2], words 1-2 given,
 *          origin = the request's transmit, receive = the kernel stamp rounded) and sends
 *          each alone, its transmit stamp read from CLOCK_REALTIME just before its own send
 *          and truncated, so never later than the send.
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

/* Whether two requests belong to one run for the access check: the same host (address
 * without port, as the MRU list keys it) and both or neither from port 123 (what
 * ``restrict ... ntpport`` tells apart). Other ports may differ: a run's MRU entry takes the
 * port of its last request, as a request at a time would leave it. */
static int same_client(const struct msghdr *a, const struct msghdr *b)
{
    if (a->msg_namelen != b->msg_namelen || a->msg_namelen < sizeof(sa_family_t))
        return 0;
    const struct sockaddr *sa = a->msg_name, *sb = b->msg_name;
    if (sa->sa_family != sb->sa_family)
        return 0;
    if (sa->sa_family == AF_INET && a->msg_namelen >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *x = a->msg_name, *y = b->msg_name;
        return x->sin_addr.s_addr == y->sin_addr.s_addr &&
               (x->sin_port == htons(123)) == (y->sin_port == htons(123));
    }
    if (sa->sa_family == AF_INET6 && a->msg_namelen >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *x = a->msg_name, *y = b->msg_name;
        return memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0 &&
               (x->sin6_port == htons(123)) == (y->sin6_port == htons(123));
    }
    return memcmp(a->msg_name, b->msg_name, a->msg_namelen) == 0;
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
        if (previous == NULL || !same_client(previous, msg)) {
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

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(hdrs, count, ok_first, want_lists) -> (mask, rows, versions, rx_ns, starts, senders)"},
    {"reply_each", reply_each, METH_VARARGS,
     "reply_each(fd, hdrs, count, mask, by_first, by_poll, word1, word2)"
     " -> (replied, sent, failed, version4, version1)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hotpath",
    "The serving hot path: classify a batch, build, stamp and send replies.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hotpath(void)
{
    return PyModule_Create(&module);
}
