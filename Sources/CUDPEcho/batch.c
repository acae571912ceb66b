// Longer than 500 lines on purpose: the batch (recvmmsg/sendmmsg buffers, peers, control messages, offload) is one
// opaque structure whose fields only this file touches, so that Swift code cannot index past a slot; the control
// message parser and writer are the one way to read and write a cmsg (bounds-checked, fuzzed).
#define _GNU_SOURCE
#include "CUDPEcho.h"

#include <arpa/inet.h>
#include <linux/net_tstamp.h>
#include <netinet/udp.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

// Room for an IPv6 PKTINFO message (40 bytes with its header), the TTL or hop limit and the TOS or traffic class
// (16 each) and a timestamp (64), with slack.
#define CONTROL_SIZE 192

struct cudpecho_batch {
    int count;
    size_t slot_size;
    size_t mapping_size;
    uint8_t *payload;
    struct mmsghdr *messages;
    struct iovec *iovecs;
    struct sockaddr_storage *peers;
    uint8_t (*control)[CONTROL_SIZE];
    int8_t *arrived_on_loopback;  // per slot: 1, 0, or -1 when the destination was not reported
    cudpecho_datagram_info *info; // per slot: receive timestamp, TTL and TOS, where the socket asked for them
    uint16_t *segment_size;       // per slot: the segment size of a coalesced run (UDP_GRO), 0 for one datagram
    int dirty;                    // slots [0, dirty) were received into (and made replies) since the last reset
};

// A bug in the caller, never a condition to survive: stop loudly, as SwiftNIO's preconditions do, instead of
// sending a reply other than the one asked for.
__attribute__((noreturn, cold)) static void cudpecho_fail(const char *what) {
    fprintf(stderr, "udpecho: internal error: %s\n", what);
    abort();
}

// Every accessor of a slot checks its index.
#define CHECK_SLOT(batch, i)                                                                                           \
    do {                                                                                                               \
        if ((i) < 0 || (i) >= (batch)->count) cudpecho_fail("batch slot index out of range");                          \
    } while (0)

// The data of control message `c` of `h` when it holds at least `size` bytes, all within the control buffer; NULL
// for one whose cmsg_len is short or runs past the buffer (the one way control messages are read).
static const void *cmsg_payload(const struct msghdr *h, const struct cmsghdr *c, size_t size) {
    const uint8_t *end = (const uint8_t *)h->msg_control + h->msg_controllen;
    if (c->cmsg_len < CMSG_LEN(size) || c->cmsg_len > (size_t)(end - (const uint8_t *)c)) {
        return NULL;
    }
    return CMSG_DATA(c);
}

// Reads a control message's data of exactly the size of `*value` into it; 0 when the message is too short.
#define CMSG_READ(h, c, value) (cmsg_read((h), (c), (value), sizeof(*(value))))
static int cmsg_read(const struct msghdr *h, const struct cmsghdr *c, void *value, size_t size) {
    const void *data = cmsg_payload(h, c, size);
    if (data == NULL) {
        return 0;
    }
    memcpy(value, data, size);
    return 1;
}

// Appends one control message to slot i's outgoing control buffer (the one way they are written); a buffer without
// room is a bug (CONTROL_SIZE holds everything a reply carries), and stops the process rather than send a run as one
// oversized datagram or a reply without its marking.
static void append_control(cudpecho_batch *batch, int i, int level, int type, const void *data, size_t size) {
    struct msghdr *h = &batch->messages[i].msg_hdr;
    size_t used = h->msg_control ? h->msg_controllen : 0;
    if (used + CMSG_SPACE(size) > CONTROL_SIZE) {
        cudpecho_fail("no room for a control message in a batch slot");
    }
    h->msg_control = batch->control[i];
    h->msg_controllen = used + CMSG_SPACE(size);
    struct cmsghdr *c = (struct cmsghdr *)((uint8_t *)batch->control[i] + used);
    memset(c, 0, CMSG_SPACE(size));
    c->cmsg_level = level;
    c->cmsg_type = type;
    c->cmsg_len = CMSG_LEN(size);
    memcpy(CMSG_DATA(c), data, size);
}

const short cudpecho_pollin = POLLIN;
const short cudpecho_pollout = POLLOUT;
const int cudpecho_so_reuseport = SO_REUSEPORT;

cudpecho_batch *cudpecho_batch_create(int count, size_t slot_size) {
    if (count <= 0 || slot_size == 0) {
        return NULL;
    }
    cudpecho_batch *batch = calloc(1, sizeof(*batch));
    if (batch == NULL) {
        return NULL;
    }
    batch->count = count;
    batch->slot_size = slot_size;
    // An anonymous mapping rather than malloc: pages are only backed once a datagram writes them, so 64 slots of
    // 64 KiB cost 64 pages of memory for small datagrams, not 4 MiB.
    batch->mapping_size = (size_t)count * slot_size;
    void *payload = mmap(NULL, batch->mapping_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    batch->payload = payload == MAP_FAILED ? NULL : payload;
    batch->messages = calloc((size_t)count, sizeof(struct mmsghdr));
    batch->iovecs = calloc((size_t)count, sizeof(struct iovec));
    batch->peers = calloc((size_t)count, sizeof(struct sockaddr_storage));
    batch->control = calloc((size_t)count, CONTROL_SIZE);
    batch->arrived_on_loopback = calloc((size_t)count, 1);
    batch->info = calloc((size_t)count, sizeof(cudpecho_datagram_info));
    batch->segment_size = calloc((size_t)count, sizeof(uint16_t));
    if (!batch->payload || !batch->messages || !batch->iovecs || !batch->peers || !batch->control
        || !batch->arrived_on_loopback || !batch->info || !batch->segment_size) {
        cudpecho_batch_destroy(batch);
        return NULL;
    }
    for (int i = 0; i < count; i++) {
        batch->iovecs[i].iov_base = batch->payload + (size_t)i * slot_size;
        batch->iovecs[i].iov_len = slot_size;
        struct msghdr *h = &batch->messages[i].msg_hdr;
        h->msg_iov = &batch->iovecs[i];
        h->msg_iovlen = 1;
        h->msg_name = &batch->peers[i];
        h->msg_namelen = sizeof(struct sockaddr_storage);
        h->msg_control = batch->control[i];
        h->msg_controllen = CONTROL_SIZE;
    }
    return batch;
}

void cudpecho_batch_destroy(cudpecho_batch *batch) {
    if (batch == NULL) {
        return;
    }
    if (batch->payload) {
        munmap(batch->payload, batch->mapping_size);
    }
    free(batch->messages);
    free(batch->iovecs);
    free(batch->peers);
    free(batch->control);
    free(batch->arrived_on_loopback);
    free(batch->info);
    free(batch->segment_size);
    free(batch);
}


// Makes slots [0, max) ready to receive into (whole slot, room for the peer and control messages); returns max,
// capped at the batch's size. Only the slots used since the last receive are reset: the others are as it left them
// (the kernel writes only the messages it fills), which spares a loop over every slot when one datagram comes at a
// time.
static int prepare_receive(cudpecho_batch *batch, int max) {
    if (max > batch->count) {
        max = batch->count;
    }
    for (int i = 0; i < batch->dirty; i++) {
        struct msghdr *h = &batch->messages[i].msg_hdr;
        batch->iovecs[i].iov_len = batch->slot_size;
        h->msg_name = &batch->peers[i];
        h->msg_namelen = sizeof(struct sockaddr_storage);
        h->msg_control = batch->control[i];
        h->msg_controllen = CONTROL_SIZE;
        h->msg_flags = 0;
    }
    batch->dirty = 0;
    return max;
}

int cudpecho_batch_recv(int fd, cudpecho_batch *batch, int max, int wait) {
    max = prepare_receive(batch, max);
    int n = recvmmsg(fd, batch->messages, (unsigned int)max, wait ? MSG_WAITFORONE : MSG_DONTWAIT, NULL);
    if (n > 0) {
        batch->dirty = n;
    }
    return n < 0 ? -errno : n;
}

size_t cudpecho_batch_length(const cudpecho_batch *batch, int i) {
    CHECK_SLOT(batch, i);
    return batch->messages[i].msg_len;
}

int cudpecho_batch_truncated(const cudpecho_batch *batch, int i) {
    CHECK_SLOT(batch, i);
    return (batch->messages[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
}

uint8_t *cudpecho_batch_payload(cudpecho_batch *batch, int i) {
    CHECK_SLOT(batch, i);
    return batch->iovecs[i].iov_base;
}

void cudpecho_batch_set_length(cudpecho_batch *batch, int i, size_t length) {
    CHECK_SLOT(batch, i);
    batch->messages[i].msg_len = (unsigned int)(length < batch->slot_size ? length : batch->slot_size);
}

const struct sockaddr *cudpecho_batch_peer(const cudpecho_batch *batch, int i, socklen_t *length) {
    CHECK_SLOT(batch, i);
    *length = batch->messages[i].msg_hdr.msg_namelen;
    return (const struct sockaddr *)&batch->peers[i];
}

static int is_loopback_v6(const struct in6_addr *a) {
    static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a->s6_addr, mapped_prefix, 12) == 0) {
        return a->s6_addr[12] == 127;
    }
    for (int i = 0; i < 15; i++) {
        if (a->s6_addr[i] != 0) {
            return 0;
        }
    }
    return a->s6_addr[15] == 1;
}

// Rewrites the received control messages of one slot into a single PKTINFO message naming the source address for
// the reply (the address the request was sent to). Anything else the kernel reported is not sent back. Returns
// whether the request arrived on a loopback address (-1: not reported).
// What a received datagram's control messages said.
typedef struct {
    cudpecho_datagram_info info;
    uint16_t segment_size;
    int have_v4, have_v6;
    struct in_pktinfo v4;
    struct in6_pktinfo v6;
} parsed_control;

// Nanoseconds of a timestamp the kernel reported, 0 (none) for one no clock can give: a time before 1970 or past
// 2262, or nanoseconds out of range (the multiplication would overflow: undefined behaviour, found by fuzzing).
static int64_t timespec_ns(const struct timespec *ts) {
    if (ts->tv_sec < 0 || ts->tv_sec >= INT64_MAX / 1000000000 || ts->tv_nsec < 0 || ts->tv_nsec >= 1000000000) {
        return 0;
    }
    return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

// Reads the control messages of `h`; a message too short for what its type carries is skipped.
static void parse_control(const struct msghdr *h, parsed_control *out) {
    out->info = (cudpecho_datagram_info){.timestamp = 0, .ttl = -1, .tos = -1, .family = 0};
    out->segment_size = 0;
    out->have_v4 = out->have_v6 = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR((struct msghdr *)h, c)) {
        int value;
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            out->have_v4 = CMSG_READ(h, c, &out->v4);
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
            out->have_v6 = CMSG_READ(h, c, &out->v6);
        } else if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL)
                   || (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_HOPLIMIT)) {
            // The kernel gives 0-255; anything else is no TTL (the callers rely on -1 or a byte).
            if (CMSG_READ(h, c, &value) && value >= 0 && value <= 255) out->info.ttl = (int16_t)value;
        } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS) {
            uint8_t tos;
            if (CMSG_READ(h, c, &tos)) out->info.tos = tos;
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_TCLASS) {
            if (CMSG_READ(h, c, &value) && value >= 0 && value <= 255) out->info.tos = (int16_t)value;
        } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPING_OLD) {
            struct timespec ts[3];
            if (CMSG_READ(h, c, &ts)) out->info.timestamp = timespec_ns(&ts[0]);
        } else if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO) {
            if (CMSG_READ(h, c, &value)) out->segment_size = value > 0 && value <= UINT16_MAX ? (uint16_t)value : 0;
        }
    }
    if (out->have_v4) {
        out->info.family = AF_INET;
        memcpy(out->info.destination, &out->v4.ipi_addr, 4);
    } else if (out->have_v6) {
        out->info.family = AF_INET6;
        memcpy(out->info.destination, &out->v6.ipi6_addr, 16);
    }
}

int cudpecho_parse_control(const void *control, size_t length, cudpecho_datagram_info *info, uint16_t *segment_size) {
    struct msghdr h = {.msg_control = (void *)control, .msg_controllen = length};
    parsed_control parsed;
    parse_control(&h, &parsed);
    *info = parsed.info;
    *segment_size = parsed.segment_size;
    return parsed.info.family;
}

static int prepare_reply_control(cudpecho_batch *batch, int i) {
    struct msghdr *h = &batch->messages[i].msg_hdr;
    parsed_control parsed;
    parse_control(h, &parsed);
    batch->info[i] = parsed.info;
    batch->segment_size[i] = parsed.segment_size;
    int have_v4 = parsed.have_v4, have_v6 = parsed.have_v6;
    struct in_pktinfo v4 = parsed.v4;
    struct in6_pktinfo v6 = parsed.v6;
    // The reply's control messages replace what was received.
    h->msg_control = NULL;
    h->msg_controllen = 0;
    int loopback = -1;
    if (have_v4) {
        loopback = (ntohl(v4.ipi_addr.s_addr) >> 24) == 127;
        // Source = the destination of the request; let routing choose the interface.
        struct in_pktinfo reply = {.ipi_ifindex = 0, .ipi_spec_dst = v4.ipi_addr};
        append_control(batch, i, IPPROTO_IP, IP_PKTINFO, &reply, sizeof(reply));
    } else if (have_v6) {
        loopback = is_loopback_v6(&v6.ipi6_addr);
        // Keep the interface: a link-local source is only meaningful on the link it arrived on.
        append_control(batch, i, IPPROTO_IPV6, IPV6_PKTINFO, &v6, sizeof(v6));
    }
    return loopback;
}

int cudpecho_batch_prepare_replies(cudpecho_batch *batch, int count, size_t *bytes, int *truncated) {
    size_t total = 0;
    int cut = 0;
    for (int i = 0; i < count; i++) {
        struct mmsghdr *m = &batch->messages[i];
        if (m->msg_hdr.msg_namelen == 0) {
            count = i;
            break;
        }
        total += m->msg_len;
        cut += (m->msg_hdr.msg_flags & MSG_TRUNC) != 0;
        batch->iovecs[i].iov_len = m->msg_len;
        batch->info[i] = (cudpecho_datagram_info){.timestamp = 0, .ttl = -1, .tos = -1, .family = 0};
        batch->segment_size[i] = 0;
        if (m->msg_hdr.msg_controllen > 0) {
            batch->arrived_on_loopback[i] = (int8_t)prepare_reply_control(batch, i);
        } else {
            m->msg_hdr.msg_control = NULL;
            batch->arrived_on_loopback[i] = -1;
        }
        m->msg_hdr.msg_flags = (m->msg_hdr.msg_flags & MSG_TRUNC);
    }
    *bytes += total;
    *truncated += cut;
    return count;
}

int cudpecho_set_receive_timeout(int fd, int milliseconds) {
    struct timeval tv = {.tv_sec = milliseconds / 1000, .tv_usec = (milliseconds % 1000) * 1000};
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 ? 0 : -errno;
}

int cudpecho_batch_send(int fd, cudpecho_batch *batch, int start, int count) {
    for (int i = start; i < start + count; i++) {
        // recvmmsg wrote the received length into msg_len; the iovec carries the length to send.
        batch->iovecs[i].iov_len = batch->messages[i].msg_len;
    }
    int n = sendmmsg(fd, batch->messages + start, (unsigned int)count, MSG_DONTWAIT);
    return n < 0 ? -errno : n;
}

int cudpecho_enable_pktinfo(int fd, int family) {
    int on = 1;
    if (setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof(on)) != 0) {
        return -errno;
    }
    if (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof(on)) != 0) {
        return -errno;
    }
    return 0;
}

int cudpecho_wait(int fd, short events, int timeout_ms) {
    struct pollfd poller = {.fd = fd, .events = events};
    int n = poll(&poller, 1, timeout_ms);
    return n < 0 ? -errno : n;
}

int64_t cudpecho_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int cudpecho_set_buffer_size(int fd, int option, int bytes) {
    if (setsockopt(fd, SOL_SOCKET, option, &bytes, sizeof(bytes)) != 0) {
        return -errno;
    }
    int actual = 0;
    socklen_t length = sizeof(actual);
    // Linux reports double the size asked for (the kernel's bookkeeping overhead).
    if (getsockopt(fd, SOL_SOCKET, option, &actual, &length) == 0 && actual < bytes * 2) {
        int force = option == SO_RCVBUF ? SO_RCVBUFFORCE : SO_SNDBUFFORCE;
        // Without privileges this fails with EPERM and the capped size stays: not an error.
        (void)setsockopt(fd, SOL_SOCKET, force, &bytes, sizeof(bytes));
    }
    return 0;
}

void cudpecho_set_thread_name(const char *name) {
    char truncated[16];
    strncpy(truncated, name, sizeof(truncated) - 1);
    truncated[sizeof(truncated) - 1] = 0;
    pthread_setname_np(pthread_self(), truncated);
}

void cudpecho_batch_set_unaddressed(cudpecho_batch *batch) {
    for (int i = 0; i < batch->count; i++) {
        struct msghdr *h = &batch->messages[i].msg_hdr;
        h->msg_name = NULL;
        h->msg_namelen = 0;
        h->msg_control = NULL;
        h->msg_controllen = 0;
    }
}

int cudpecho_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int cudpecho_epoll_add(int epoll, int fd, uint32_t token) {
    struct epoll_event event = {.events = EPOLLIN, .data.u32 = token};
    return epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0 ? 0 : -errno;
}

int cudpecho_epoll_wait(int epoll, uint32_t *tokens, int max, int64_t timeout_ns) {
    struct epoll_event events[64];
    if (max > 64) {
        max = 64;
    }
    struct timespec timeout = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
    int n = epoll_pwait2(epoll, events, max, timeout_ns < 0 ? NULL : &timeout, NULL);
    if (n < 0 && errno == ENOSYS) {
        // Kernels before 5.11: millisecond resolution, rounded up so that a wait never ends early.
        n = epoll_wait(epoll, events, max, timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999) / 1000000));
    }
    if (n < 0) {
        return -errno;
    }
    for (int i = 0; i < n; i++) {
        tokens[i] = events[i].data.u32;
    }
    return n;
}

int cudpecho_batch_arrived_on_loopback(const cudpecho_batch *batch, int i) {
    CHECK_SLOT(batch, i);
    return batch->arrived_on_loopback[i];
}

// MARK: Timestamps and the error queue

#include <linux/errqueue.h>

const int cudpecho_ee_origin_local = SO_EE_ORIGIN_LOCAL;
const int cudpecho_ee_origin_timestamping = SO_EE_ORIGIN_TIMESTAMPING;

#ifndef SCM_TS_OPT_ID
#define SCM_TS_OPT_ID 81
#endif


void cudpecho_batch_request_timestamp(cudpecho_batch *batch, int i, int hardware, int with_id, uint32_t id) {
    CHECK_SLOT(batch, i);
    struct msghdr *h = &batch->messages[i].msg_hdr;
    h->msg_control = NULL;
    h->msg_controllen = 0;
    int flags = hardware ? SOF_TIMESTAMPING_TX_HARDWARE : SOF_TIMESTAMPING_TX_SOFTWARE;
    append_control(batch, i, SOL_SOCKET, SO_TIMESTAMPING_OLD, &flags, sizeof(flags));
    if (with_id) {
        append_control(batch, i, SOL_SOCKET, SCM_TS_OPT_ID, &id, sizeof(id));
    }
}

void cudpecho_batch_clear_control(cudpecho_batch *batch, int i) {
    CHECK_SLOT(batch, i);
    batch->messages[i].msg_hdr.msg_control = NULL;
    batch->messages[i].msg_hdr.msg_controllen = 0;
}

// The timestamp of an SCM_TIMESTAMPING message: [0] software, [2] raw hardware, as CLOCK_REALTIME (or the NIC's
// clock) nanoseconds; 0 if absent.
static int64_t timestamp_of(struct msghdr *h, int hardware) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
        struct timespec ts[3];
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPING_OLD && CMSG_READ(h, c, &ts)) {
            struct timespec *chosen = hardware ? &ts[2] : &ts[0];
            return timespec_ns(chosen);
        }
    }
    return 0;
}

int64_t cudpecho_batch_timestamp(const cudpecho_batch *batch, int i, int hardware) {
    CHECK_SLOT(batch, i);
    return timestamp_of(&((cudpecho_batch *)batch)->messages[i].msg_hdr, hardware);
}

int cudpecho_batch_recv_errors(int fd, cudpecho_batch *batch, int max) {
    max = prepare_receive(batch, max);
    int n = recvmmsg(fd, batch->messages, (unsigned int)max, MSG_ERRQUEUE | MSG_DONTWAIT, NULL);
    if (n > 0) {
        batch->dirty = n;
    }
    return n < 0 ? -errno : n;
}

int cudpecho_parse_error_control(const void *control, size_t length, int hardware, cudpecho_error_info *info) {
    struct msghdr h = {.msg_control = (void *)control, .msg_controllen = length};
    memset(info, 0, sizeof(*info));
    int found = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&h); c != NULL; c = CMSG_NXTHDR(&h, c)) {
        if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR)
            || (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
            struct sock_extended_err error;
            if (!CMSG_READ(&h, c, &error)) continue;
            info->error = (int32_t)error.ee_errno;
            info->origin = error.ee_origin;
            info->type = error.ee_type;
            info->code = error.ee_code;
            info->data = error.ee_data;
            found = 1;
        }
    }
    info->timestamp = timestamp_of(&h, hardware);
    return found;
}

int cudpecho_batch_error(const cudpecho_batch *batch, int i, int hardware, cudpecho_error_info *info) {
    CHECK_SLOT(batch, i);
    const struct msghdr *h = &batch->messages[i].msg_hdr;
    return cudpecho_parse_error_control(h->msg_control, h->msg_controllen, hardware, info);
}

const cudpecho_datagram_info *cudpecho_batch_info(const cudpecho_batch *batch, int i) {
    CHECK_SLOT(batch, i);
    return &batch->info[i];
}

int cudpecho_enable_datagram_info(int fd, int family) {
    int flags = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE;
    int marks = cudpecho_enable_receive_marks(fd, family);
    if (marks != 0) {
        return marks;
    }
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING_OLD, &flags, sizeof(flags)) == 0 ? 0 : -errno;
}

void cudpecho_batch_set_reply_tos(cudpecho_batch *batch, int i, int ipv6, int tos) {
    CHECK_SLOT(batch, i);
    append_control(batch, i, ipv6 ? IPPROTO_IPV6 : IPPROTO_IP, ipv6 ? IPV6_TCLASS : IP_TOS, &tos, sizeof(tos));
}

int cudpecho_batch_received_tos(const cudpecho_batch *batch, int i) {
    CHECK_SLOT(batch, i);
    parsed_control parsed;
    parse_control(&batch->messages[i].msg_hdr, &parsed);
    return parsed.info.tos;
}

int cudpecho_enable_receive_marks(int fd, int family) {
    int on = 1;
    if (setsockopt(fd, IPPROTO_IP, IP_RECVTTL, &on, sizeof(on)) != 0
        || setsockopt(fd, IPPROTO_IP, IP_RECVTOS, &on, sizeof(on)) != 0) {
        return -errno;
    }
    if (family == AF_INET6 && (setsockopt(fd, IPPROTO_IPV6, IPV6_RECVHOPLIMIT, &on, sizeof(on)) != 0
                               || setsockopt(fd, IPPROTO_IPV6, IPV6_RECVTCLASS, &on, sizeof(on)) != 0)) {
        return -errno;
    }
    return 0;
}

int cudpecho_batch_received_ttl(const cudpecho_batch *batch, int i) {
    CHECK_SLOT(batch, i);
    parsed_control parsed;
    parse_control(&batch->messages[i].msg_hdr, &parsed);
    return parsed.info.ttl;
}

int cudpecho_set_marking(int fd, int family, int tos, int ttl, int dont_fragment) {
    if (tos >= 0) {
        if (setsockopt(fd, IPPROTO_IP, IP_TOS, &tos, sizeof(tos)) != 0 && family == AF_INET) {
            return -errno;
        }
        if (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_TCLASS, &tos, sizeof(tos)) != 0) {
            return -errno;
        }
    }
    if (ttl >= 0) {
        if (setsockopt(fd, IPPROTO_IP, IP_TTL, &ttl, sizeof(ttl)) != 0 && family == AF_INET) {
            return -errno;
        }
        if (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &ttl, sizeof(ttl)) != 0) {
            return -errno;
        }
    }
    if (dont_fragment) {
        int mode = IP_PMTUDISC_DO;
        if (setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &mode, sizeof(mode)) != 0 && family == AF_INET) {
            return -errno;
        }
        if (family == AF_INET6) {
            int v6mode = IPV6_PMTUDISC_DO, on = 1;
            if (setsockopt(fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, &v6mode, sizeof(v6mode)) != 0
                || setsockopt(fd, IPPROTO_IPV6, IPV6_DONTFRAG, &on, sizeof(on)) != 0) {
                return -errno;
            }
        }
    }
    return 0;
}

int cudpecho_sent_ttl(int fd, int family) {
    int value = 0;
    socklen_t length = sizeof(value);
    int result = family == AF_INET6 ? getsockopt(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &value, &length)
                                    : getsockopt(fd, IPPROTO_IP, IP_TTL, &value, &length);
    return result == 0 ? value : -errno;
}

// MARK: UDP generic receive and segmentation offload

int cudpecho_enable_gro(int fd) {
    int on = 1;
    return setsockopt(fd, IPPROTO_UDP, UDP_GRO, &on, sizeof(on)) == 0 ? 0 : -errno;
}

uint16_t cudpecho_batch_segment_size(const cudpecho_batch *batch, int i) {
    CHECK_SLOT(batch, i);
    return batch->segment_size[i];
}

void cudpecho_batch_set_segment_size(cudpecho_batch *batch, int i, uint16_t size) {
    CHECK_SLOT(batch, i);
    batch->segment_size[i] = size;
    if (size == 0 || batch->messages[i].msg_len <= size) {
        return; // one datagram: a plain write
    }
    append_control(batch, i, IPPROTO_UDP, UDP_SEGMENT, &size, sizeof(size));
}

int cudpecho_batch_send_split(int fd, cudpecho_batch *batch, int i, int *sent) {
    CHECK_SLOT(batch, i);
    struct msghdr *h = &batch->messages[i].msg_hdr;
    size_t length = batch->messages[i].msg_len;
    size_t size = batch->segment_size[i] ? batch->segment_size[i] : length;
    // The control messages without the UDP_SEGMENT one, which set_segment_size appended last.
    size_t control = h->msg_control ? h->msg_controllen : 0;
    if (control >= CMSG_SPACE(sizeof(uint16_t)) && length > size) {
        struct cmsghdr *last = (struct cmsghdr *)((uint8_t *)h->msg_control + control - CMSG_SPACE(sizeof(uint16_t)));
        if (last->cmsg_level == IPPROTO_UDP && last->cmsg_type == UDP_SEGMENT) {
            control -= CMSG_SPACE(sizeof(uint16_t));
        }
    }
    struct mmsghdr messages[64];
    struct iovec iovecs[64];
    size_t offset = (size_t)*sent * size;
    while (offset < length) {
        unsigned int n = 0;
        for (; n < 64 && offset < length; n++) {
            size_t part = length - offset < size ? length - offset : size;
            iovecs[n] = (struct iovec){.iov_base = (uint8_t *)batch->iovecs[i].iov_base + offset, .iov_len = part};
            messages[n].msg_hdr = (struct msghdr){
                .msg_name = h->msg_name,
                .msg_namelen = h->msg_namelen,
                .msg_iov = &iovecs[n],
                .msg_iovlen = 1,
                .msg_control = control ? h->msg_control : NULL,
                .msg_controllen = control,
            };
            offset += part;
        }
        int done = sendmmsg(fd, messages, n, MSG_DONTWAIT);
        if (done < 0) {
            return -errno;
        }
        *sent += done;
        if ((unsigned int)done < n) {
            return -EAGAIN;
        }
        offset = (size_t)*sent * size;
    }
    return 0;
}

int cudpecho_batch_send_run(int fd, cudpecho_batch *batch, int start, int count, uint16_t size) {
    // The slots are contiguous in the mapping: slots [start, start + count) of `size` bytes are one buffer.
    struct iovec iov = {.iov_base = batch->iovecs[start].iov_base, .iov_len = (size_t)count * batch->slot_size};
    union {
        char buffer[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr h = {
        .msg_name = batch->messages[start].msg_hdr.msg_name,
        .msg_namelen = batch->messages[start].msg_hdr.msg_namelen,
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buffer,
        .msg_controllen = sizeof(control.buffer),
    };
    struct cmsghdr *c = CMSG_FIRSTHDR(&h);
    c->cmsg_level = IPPROTO_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(c), &size, sizeof(size));
    if (batch->slot_size != size) {
        return -EINVAL;
    }
    ssize_t n = sendmsg(fd, &h, MSG_DONTWAIT);
    return n < 0 ? -errno : count;
}

int cudpecho_batch_received_segment_size(const cudpecho_batch *batch, int i) {
    CHECK_SLOT(batch, i);
    struct msghdr *h = &((cudpecho_batch *)batch)->messages[i].msg_hdr;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
        int value;
        if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO && CMSG_READ(h, c, &value)) {
            return value;
        }
    }
    return 0;
}

// MARK: Path MTU probing

int cudpecho_mtu_socket(const struct sockaddr *target, socklen_t length) {
    int family = target->sa_family;
    int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP);
    if (fd < 0) {
        return -errno;
    }
    int on = 1;
    int probe = family == AF_INET6 ? IPV6_PMTUDISC_PROBE : IP_PMTUDISC_PROBE;
    int failed = family == AF_INET6
                     ? (setsockopt(fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, &probe, sizeof(probe)) != 0
                        || setsockopt(fd, IPPROTO_IPV6, IPV6_DONTFRAG, &on, sizeof(on)) != 0
                        || setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &on, sizeof(on)) != 0)
                     : (setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &probe, sizeof(probe)) != 0
                        || setsockopt(fd, IPPROTO_IP, IP_RECVERR, &on, sizeof(on)) != 0);
    if (failed || connect(fd, target, length) != 0) {
        int code = errno;
        close(fd);
        return -code;
    }
    return fd;
}

int cudpecho_read_socket_error(int fd, int *error, int *origin, int *type, int *code, uint32_t *info) {
    uint8_t data[64];
    uint8_t control[256];
    struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
    struct msghdr h = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
    if (recvmsg(fd, &h, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&h); c != NULL; c = CMSG_NXTHDR(&h, c)) {
        if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR)
            || (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
            struct sock_extended_err e;
            if (!CMSG_READ(&h, c, &e)) continue;
            *error = (int)e.ee_errno;
            *origin = e.ee_origin;
            *type = e.ee_type;
            *code = e.ee_code;
            *info = e.ee_info;
            return 1;
        }
    }
    *error = 0;
    *origin = 0;
    *type = 0;
    *code = 0;
    *info = 0;
    return 1;
}

int cudpecho_eventfd(void) {
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}
