#ifndef CUDPECHO_H
#define CUDPECHO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>

/// What the kernel reported about one received datagram, where the socket asked (``cudpecho_enable_datagram_info``).
typedef struct {
    int64_t timestamp;  // the kernel's receive timestamp, CLOCK_REALTIME ns; 0 if none
    int16_t ttl;        // the IPv4 TTL or IPv6 hop limit it arrived with; -1 if not reported
    int16_t tos;        // the IPv4 TOS or IPv6 traffic class byte (DSCP and ECN); -1 if not reported
    int32_t family;     // AF_INET or AF_INET6: the address it was sent to, from PKTINFO; 0 if not reported
    uint8_t destination[16];
} cudpecho_datagram_info;

/// A batch of datagram slots for recvmmsg(2)/sendmmsg(2).
///
/// Each slot owns a payload buffer of `slot_size` bytes, a peer address and a small control buffer that holds the
/// destination address the datagram arrived on (IP_PKTINFO / IPV6_PKTINFO), so that the reply leaves from the same
/// address even on a socket bound to the wildcard address of a multi-homed host.
typedef struct cudpecho_batch cudpecho_batch;

/// Allocates a batch of `count` slots of `slot_size` bytes each. Returns NULL when out of memory.
/// Payload memory is reserved, not touched: small datagrams only ever touch the first page of a slot.
cudpecho_batch *cudpecho_batch_create(int count, size_t slot_size);
void cudpecho_batch_destroy(cudpecho_batch *batch);

/// Receives up to `max` datagrams. With `wait`, blocks until the first one arrives (or the socket's SO_RCVTIMEO
/// passes) and then takes what is queued (MSG_WAITFORONE); without, never blocks. Returns how many messages arrived,
/// or -errno. After shutdown(SHUT_RD) of the socket an empty queue yields messages with no sender: see
/// ``cudpecho_batch_prepare_replies``.
int cudpecho_batch_recv(int fd, cudpecho_batch *batch, int max, int wait);

/// Length of the datagram in slot `i` after a receive.
size_t cudpecho_batch_length(const cudpecho_batch *batch, int i);
/// Whether the datagram in slot `i` was larger than its slot (MSG_TRUNC).
int cudpecho_batch_truncated(const cudpecho_batch *batch, int i);
/// Payload bytes of slot `i`.
uint8_t *cudpecho_batch_payload(cudpecho_batch *batch, int i);
/// Sets the length of slot `i` (for sending), clamped to the slot size.
void cudpecho_batch_set_length(cudpecho_batch *batch, int i, size_t length);
/// Peer address of slot `i` and its length.
const struct sockaddr *cudpecho_batch_peer(const cudpecho_batch *batch, int i, socklen_t *length);

/// Turns what was received in slots [0, count) into replies: each goes back to its sender with the same payload,
/// from the address it arrived on when that address is known (a single PKTINFO control message), else with none.
/// Returns how many of the slots hold datagrams: it stops at the first message without a sender, which is the
/// wake-up of a shut-down socket, never a datagram. Adds their payload bytes to `*bytes` and counts in `*truncated`
/// those cut by a too-small slot.
int cudpecho_batch_prepare_replies(cudpecho_batch *batch, int count, size_t *bytes, int *truncated);

/// After ``cudpecho_batch_prepare_replies``: whether the datagram in slot `i` was sent to a loopback address (1),
/// to another address (0), or the kernel did not say (-1: the socket is not bound to a wildcard address).
int cudpecho_batch_arrived_on_loopback(const cudpecho_batch *batch, int i);

/// After ``cudpecho_batch_prepare_replies``: the receive timestamp, TTL and TOS of slot `i`.
// Reads control messages as a received datagram's are read (the one parser, bounds-checked: a message whose
// cmsg_len is short for its type, or runs past `length`, is skipped): what they say into `info` and `segment_size`.
// Returns the family of the destination address found (AF_INET, AF_INET6), or 0.
int cudpecho_parse_control(const void *control, size_t length, cudpecho_datagram_info *info, uint16_t *segment_size);

const cudpecho_datagram_info *cudpecho_batch_info(const cudpecho_batch *batch, int i);

/// Sends the reply in slot `i` with this TOS (IPv4) or traffic class (IPv6) byte: DSCP and ECN, appended to its
/// control messages.
void cudpecho_batch_set_reply_tos(cudpecho_batch *batch, int i, int ipv6, int tos);

/// After a receive: the TOS or traffic class byte slot `i` arrived with, or -1 if not reported.
int cudpecho_batch_received_tos(const cudpecho_batch *batch, int i);

/// Asks the kernel to report the TTL (IPv4) or hop limit (IPv6), and the TOS or traffic class byte, of each
/// datagram received; on an IPv6 socket for IPv4-mapped peers too. Returns 0 or -errno.
int cudpecho_enable_receive_marks(int fd, int family);
/// After a receive: the TTL or hop limit slot `i` arrived with, or -1 if not reported.
int cudpecho_batch_received_ttl(const cudpecho_batch *batch, int i);

/// Marks what a socket sends: the TOS or traffic class byte (`tos`, -1 to leave it), the TTL or hop limit (`ttl`,
/// -1 to leave it), and, if `dont_fragment`, DF set with path MTU discovery on (IP_PMTUDISC_DO / IPV6_DONTFRAG:
/// a datagram larger than the path's known MTU fails with EMSGSIZE instead of being fragmented). Returns 0 or
/// -errno.
int cudpecho_set_marking(int fd, int family, int tos, int ttl, int dont_fragment);
/// The TTL or hop limit the socket sends with (the system default unless set). Returns it or -errno.
int cudpecho_sent_ttl(int fd, int family);

/// Asks the kernel to report each datagram's receive timestamp (software), TTL or hop limit, and TOS or traffic
/// class. Returns 0 or -errno.
int cudpecho_enable_datagram_info(int fd, int family);

/// Sets or clears (0) the socket's receive timeout (SO_RCVTIMEO) in milliseconds. Returns 0 or -errno.
int cudpecho_set_receive_timeout(int fd, int milliseconds);

/// Sends slots [start, start + count) without blocking. Returns how many were sent (>= 1), or -errno for the error
/// of the first one.
int cudpecho_batch_send(int fd, cudpecho_batch *batch, int start, int count);

/// Asks the kernel to report the destination address of each datagram (IP_PKTINFO and, on IPv6 sockets,
/// IPV6_RECVPKTINFO). Returns 0 or -errno.
int cudpecho_enable_pktinfo(int fd, int family);

/// Waits until `fd` is ready for `events` (POLLIN/POLLOUT), for at most `timeout_ms` (-1 forever). Returns 1 if it
/// is ready, 0 on timeout, -errno on error.
int cudpecho_wait(int fd, short events, int timeout_ms);

/// Current CLOCK_MONOTONIC time in nanoseconds.
int64_t cudpecho_now_ns(void);

/// Sets an integer socket option, and for SO_RCVBUF/SO_SNDBUF falls back to the FORCE variants (root or
/// CAP_NET_ADMIN) when the limit of net.core.[rw]mem_max would cap the size. Returns 0 or -errno.
int cudpecho_set_buffer_size(int fd, int option, int bytes);

/// Names the calling thread (shown by ps and top), truncated to 15 bytes.
void cudpecho_set_thread_name(const char *name);

/// Makes slots send to the socket's connected peer: no address, no control message.
void cudpecho_batch_set_unaddressed(cudpecho_batch *batch);

/// An epoll instance (close-on-exec). Returns the descriptor or -errno.
int cudpecho_epoll_create(void);
/// Watches `fd` for input, reporting it as `token`. Returns 0 or -errno.
int cudpecho_epoll_add(int epoll, int fd, uint32_t token);
/// Waits up to `timeout_ns` (-1 forever) for watched descriptors with input; writes up to `max` of their tokens.
/// Returns how many, 0 on timeout, or -errno.
int cudpecho_epoll_wait(int epoll, uint32_t *tokens, int max, int64_t timeout_ns);

/// POLLIN / POLLOUT, which Swift sees as macros of the wrong type on some libcs.
extern const short cudpecho_pollin;
extern const short cudpecho_pollout;
/// SO_REUSEPORT, which SwiftNIO has no shorthand for.
extern const int cudpecho_so_reuseport;
/// Where an error-queue message comes from (linux/errqueue.h): the local stack (an MTU it knows), or a transmit
/// timestamp.
extern const int cudpecho_ee_origin_local;
extern const int cudpecho_ee_origin_timestamping;

// MARK: Events from the serving threads

/// What a serving thread reports about a datagram (or a receive error, or datagrams not shown), as a fixed-size
/// record that it can write without allocating or formatting anything.
typedef struct {
    uint8_t kind;     // CUDPECHO_EVENT_*
    uint8_t reason;   // for a drop: the reason's ordinal
    uint16_t unused;
    int32_t error;    // errno, 0 for none
    uint64_t value;   // bytes; for CUDPECHO_EVENT_NOT_SHOWN, datagrams
    union {
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } peer;
    uint32_t peer_length;
} cudpecho_event;

enum {
    CUDPECHO_EVENT_ECHOED = 1,        // received and written back
    CUDPECHO_EVENT_DROPPED = 2,       // received and not written back, for `reason`
    CUDPECHO_EVENT_RECEIVE_ERROR = 3, // reading the socket failed with `error`
    CUDPECHO_EVENT_NOT_SHOWN = 4,     // `value` datagrams of the last second were not reported
};

/// A single-producer, single-consumer ring of events: one serving thread writes, the event thread reads.
typedef struct cudpecho_ring cudpecho_ring;

/// A ring of `capacity` events (rounded up to a power of two). Returns NULL when out of memory.
cudpecho_ring *cudpecho_ring_create(uint32_t capacity);
void cudpecho_ring_destroy(cudpecho_ring *ring);
/// Appends an event; returns 0 when the ring is full (the event is not kept).
int cudpecho_ring_push(cudpecho_ring *ring, const cudpecho_event *event);
/// Takes the oldest event; returns 0 when the ring is empty.
int cudpecho_ring_pop(cudpecho_ring *ring, cudpecho_event *event);
/// Whether the ring holds no event.
int cudpecho_ring_is_empty(cudpecho_ring *ring);
/// Fills `event`'s peer from a received datagram's source address.
void cudpecho_event_set_peer(cudpecho_event *event, const struct sockaddr *peer, socklen_t length);

/// Wakes a consumer that sleeps until producers have news, with a futex: a producer pays a system call only when
/// the consumer is asleep.
typedef struct cudpecho_notifier cudpecho_notifier;

cudpecho_notifier *cudpecho_notifier_create(void);
void cudpecho_notifier_destroy(cudpecho_notifier *notifier);

/// Producer: after publishing, wakes the consumer if it sleeps.
void cudpecho_notifier_wake(cudpecho_notifier *notifier);
/// Consumer: announces that it is about to sleep; returns the sequence to pass to ``cudpecho_notifier_wait``. The
/// consumer must look for news once more after this call, and not sleep if there is any.
uint32_t cudpecho_notifier_prepare(cudpecho_notifier *notifier);
/// Consumer: sleeps until woken after `sequence`, or for at most `timeout_ms`.
void cudpecho_notifier_wait(cudpecho_notifier *notifier, uint32_t sequence, int timeout_ms);
/// Consumer: found news after preparing; does not sleep.
void cudpecho_notifier_cancel(cudpecho_notifier *notifier);

// MARK: Timestamps (SO_TIMESTAMPING) and the error queue

/// What the error queue said about one message: an ICMP error about a datagram sent (`origin` 2 or 3, `error` such
/// as ECONNREFUSED, its payload in the slot), or a transmit timestamp (`origin` 4, SO_EE_ORIGIN_TIMESTAMPING,
/// `data` the send's ID).
typedef struct {
    int32_t error;
    uint8_t origin;
    uint8_t type;
    uint8_t code;
    uint8_t unused;
    uint32_t data;
    int64_t timestamp;  // CLOCK_REALTIME ns (software) or the NIC's clock (hardware); 0 if none
} cudpecho_error_info;

/// Asks for errors on the error queue (IP_RECVERR / IPV6_RECVERR) and, unless `hardware` is -1, for software (0)
/// or hardware (1) receive timestamps, and transmit timestamps with IDs and without the payload for the sends that
/// ask (``cudpecho_batch_request_timestamp``). Returns 0 or -errno.
int cudpecho_enable_timestamps(int fd, int family, int hardware);
/// Whether the kernel takes a transmit timestamp's ID with each send (SCM_TS_OPT_ID, Linux 6.13); without it, IDs
/// count the datagrams the socket sent.
int cudpecho_timestamp_ids_supported(void);
/// Whether the interface that the route to `target` leaves by timestamps in hardware, turning it on if so (needs
/// CAP_NET_ADMIN). Writes the interface's name. Returns 0, -EOPNOTSUPP when it cannot, or another -errno.
int cudpecho_hardware_timestamping(const struct sockaddr *target, socklen_t length, char *interface,
                                   size_t interface_size);
/// Sets the calling thread's timer slack (PR_SET_TIMERSLACK): how late the kernel may wake it, at most.
void cudpecho_set_timer_slack(unsigned long nanoseconds);
/// A timer on CLOCK_MONOTONIC that can be watched with epoll (timerfd, non-blocking). Returns it or -errno.
int cudpecho_timer_create(void);
/// Arms the timer to fire at the absolute CLOCK_MONOTONIC time `deadline_ns` (0 disarms), clearing a past expiry.
/// Unlike a poll or epoll timeout, which the kernel may stretch by 0.1% of its length, an absolute timer fires on
/// time (within the thread's timer slack). Returns 0 or -errno.
int cudpecho_timer_set(int fd, int64_t deadline_ns);
/// What adjtimex(2) says about the system clock: whether it is synchronized to an external source (not TIME_ERROR,
/// no STA_UNSYNC), its estimated error in microseconds, and TAI - UTC in seconds (0 when unknown).
void cudpecho_clock_state(int *synchronized, long *error_us, int *tai);
/// Current CLOCK_REALTIME time in nanoseconds, the clock of software timestamps.
int64_t cudpecho_realtime_ns(void);

/// Asks for a software (or `hardware`) transmit timestamp of the send of slot `i`, with the ID `id` when `with_id`
/// (SCM_TS_OPT_ID; without it the kernel counts the timestamped sends).
void cudpecho_batch_request_timestamp(cudpecho_batch *batch, int i, int hardware, int with_id, uint32_t id);
/// Sends slot `i` without a control message.
void cudpecho_batch_clear_control(cudpecho_batch *batch, int i);
/// The kernel's receive timestamp of slot `i` after a receive: software or (`hardware`) raw hardware, in ns; 0 if
/// none.
int64_t cudpecho_batch_timestamp(const cudpecho_batch *batch, int i, int hardware);
/// Receives up to `max` messages from the socket's error queue without blocking. Returns how many, or -errno
/// (-EAGAIN when it is empty).
int cudpecho_batch_recv_errors(int fd, cudpecho_batch *batch, int max);
/// Reads the error of slot `i` after ``cudpecho_batch_recv_errors``; returns 0 if it carries none.
int cudpecho_batch_error(const cudpecho_batch *batch, int i, int hardware, cudpecho_error_info *info);
/// Reads error-queue control messages (IP_RECVERR, IPV6_RECVERR, SO_TIMESTAMPING) as
/// ``cudpecho_batch_error`` does, from any buffer: a message short for its type, or running past `length`, is
/// skipped. Returns whether an error was found.
int cudpecho_parse_error_control(const void *control, size_t length, int hardware, cudpecho_error_info *info);

/// An eventfd (non-blocking, close-on-exec) for waking a thread that waits in epoll. Returns it or -errno.
int cudpecho_eventfd(void);

// MARK: Path MTU probing

/// Opens a UDP socket connected to `target` for path MTU probes: DF set (IPv4) or fragmentation forbidden (IPv6)
/// while the kernel's path MTU cache is ignored (IP_PMTUDISC_PROBE / IPV6_PMTUDISC_PROBE), so that a probe larger
/// than a size learnt before is still sent, and ICMP errors are queued on the socket's error queue. Returns the
/// descriptor or -errno.
int cudpecho_mtu_socket(const struct sockaddr *target, socklen_t length);

/// Reads one error from the error queue of `fd` without waiting: 1 and the error (errno), where it came from
/// (SO_EE_ORIGIN_LOCAL 1, ICMP 2, ICMP6 3), its ICMP type and code, and `info` (the MTU for EMSGSIZE); 0 when
/// the queue is empty; -errno on failure.
int cudpecho_read_socket_error(int fd, int *error, int *origin, int *type, int *code, uint32_t *info);

// MARK: UDP generic receive and segmentation offload (GRO/GSO)

/// Asks the kernel to hand over runs of same-sized datagrams from one sender as one coalesced buffer (UDP_GRO,
/// Linux 5.0), with the segment size in a control message. Returns 0 or -errno.
int cudpecho_enable_gro(int fd);
/// After ``cudpecho_batch_prepare_replies``: the segment size of the coalesced run in slot `i` (every datagram of
/// the run has this size but the last, which may be shorter), or 0 if the slot holds one datagram.
uint16_t cudpecho_batch_segment_size(const cudpecho_batch *batch, int i);
/// Sends slot `i` as a run of datagrams of `size` bytes (the last may be shorter) in one write (UDP_SEGMENT), the
/// kernel cutting it; 0, or a slot no longer than `size`, sends it as one datagram. Call after setting the length.
void cudpecho_batch_set_segment_size(cudpecho_batch *batch, int i, uint16_t size);
/// Sends slot `i`'s run as separate datagrams (for a kernel or device that refuses the segmented write), starting
/// after the `*sent` datagrams already sent and counting the ones it sends into `*sent`. Returns 0 when all went,
/// or -errno (-EAGAIN when the send buffer filled).
int cudpecho_batch_send_split(int fd, cudpecho_batch *batch, int i, int *sent);
/// Sends slots [start, start + count) of a batch whose slots are `size` bytes as one segmented write (UDP_SEGMENT)
/// of `count` datagrams, to the address of slot `start` (or the connected peer). Returns `count`, or -errno.
int cudpecho_batch_send_run(int fd, cudpecho_batch *batch, int start, int count, uint16_t size);
/// After a receive on a socket with UDP_GRO: the segment size of the coalesced run in slot `i`, or 0 for one
/// datagram.
int cudpecho_batch_received_segment_size(const cudpecho_batch *batch, int i);

// The bpf(2) calls of the XDP path (xdp.c): each returns a descriptor or 0, or -errno.

/// linux/bpf.h's and linux/if_link.h's values that the server uses, as Swift sees them.
enum {
    CUDPECHO_BPF_PSEUDO_MAP_FD = 1,
    CUDPECHO_XDP_FLAGS_SKB_MODE = 1 << 1,
    CUDPECHO_XDP_FLAGS_DRV_MODE = 1 << 2,
};

/// Makes a BPF map named `name` (at most 15 characters kept).
int cudpecho_bpf_map_create(uint32_t type, uint32_t key_size, uint32_t value_size, uint32_t entries, uint32_t flags,
                            const char *name);
/// Loads `count` instructions as an XDP program (GPL). If the kernel refuses them, tries again with the verifier's
/// log in `log` (NUL-terminated) and returns the error.
int cudpecho_bpf_load_xdp(const void *instructions, uint32_t count, const char *name, char *log, uint32_t log_size);
/// Attaches `program` to interface `ifindex` with a BPF link (XDP_FLAGS_DRV_MODE or XDP_FLAGS_SKB_MODE in `flags`);
/// the link's descriptor keeps it attached, and closing it (or the process ending) detaches it.
int cudpecho_bpf_link_xdp(int program, int ifindex, uint32_t flags);
int cudpecho_bpf_map_update(int map, const void *key, const void *value, uint64_t flags);
int cudpecho_bpf_map_lookup(int map, const void *key, void *value);
int cudpecho_bpf_map_delete(int map, const void *key);
/// The key after `key` (the first key if `key` is NULL) into `next`; -ENOENT after the last.
int cudpecho_bpf_map_next_key(int map, const void *key, void *next);
/// Runs XDP `program` once over the frame `input` (BPF_PROG_TEST_RUN, no interface): its action into `action`, the
/// frame as it left the program into `output` (its size in and out through `output_size`).
int cudpecho_bpf_test_run_xdp(int program, const void *input, uint32_t input_size, void *output, uint32_t *output_size,
                              uint32_t *action);
/// The number of CPUs a per-CPU map holds values for (the highest possible CPU plus one).
int cudpecho_possible_cpus(void);

#include "xdp_shared.h"

#endif
