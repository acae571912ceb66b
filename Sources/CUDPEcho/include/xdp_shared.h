#ifndef CUDPECHO_XDP_SHARED_H
#define CUDPECHO_XDP_SHARED_H

// What the XDP program (Sources/UDPEcho/XDP/Program/udpecho.bpf.c) and the server that loads it share: the
// configuration the server writes into the program's `config` map, the indices of its counters, and the keys and
// values of its tables. Plain fixed-width fields, the same layout in the BPF object and in the server.

#include <linux/types.h>

/// Where the program's counters are in the one per-CPU entry of its `counters` map.
enum udpecho_xdp_counter {
    /// Datagrams to the server's address and port that the program looked at (answered, dropped or passed up).
    UDPECHO_XDP_SEEN = 0,
    /// Payload bytes of the datagrams judged in XDP (answered there, or dropped by a guard).
    UDPECHO_XDP_JUDGED_BYTES,
    /// Of those, answered in XDP: echoes, and STAMP test packets reflected; their payload bytes.
    UDPECHO_XDP_ECHOED,
    UDPECHO_XDP_ECHOED_BYTES,
    UDPECHO_XDP_REFLECTED,
    /// Passed up to the socket path, by reason.
    UDPECHO_XDP_PASS_FRAGMENT,
    UDPECHO_XDP_PASS_OPTIONS,
    UDPECHO_XDP_PASS_STAMP,  // see XDPPassReason in XDPPath.swift for what each means
    /// A UDP checksum that does not verify: the stack drops it and counts it (UDP InCsumErrors).
    UDPECHO_XDP_PASS_CHECKSUM,
    UDPECHO_XDP_PASS_OTHER,
    /// Dropped by a guard, by reason: the socket path's reasons (DropReason) of the same names.
    UDPECHO_XDP_DROP_OVERSIZE,
    UDPECHO_XDP_DROP_SOURCE_PORT,
    UDPECHO_XDP_DROP_SOURCE_ADDRESS,
    UDPECHO_XDP_DROP_OWN_ENDPOINT,
    UDPECHO_XDP_DROP_DENIED,
    UDPECHO_XDP_DROP_LOOP,
    UDPECHO_XDP_DROP_RATE_LIMITED,
    UDPECHO_XDP_DROP_OVER_BUDGET,
    /// Rate-limiter table entries made for a new source, and sources it forgot to make room (the new one takes over
    /// the forgotten one's bucket, as on the socket path).
    UDPECHO_XDP_RATE_NEW_SOURCE,
    UDPECHO_XDP_RATE_EVICTED,
    UDPECHO_XDP_COUNTERS
};

/// What the program answers: echo datagrams; STAMP test packets (unauthenticated and stateless, the 44-byte base
/// only); or nothing (STAMP that needs a key or a session's state: every test packet goes up).
enum udpecho_xdp_mode { UDPECHO_XDP_MODE_ECHO = 0, UDPECHO_XDP_MODE_STAMP = 1, UDPECHO_XDP_MODE_PASS = 2 };

/// Flags of `udpecho_xdp_config.flags`.
enum udpecho_xdp_flag {
    /// The server is bound to one address (`address`); without it, any address of this host (the `local` map).
    UDPECHO_XDP_BOUND = 1,
    UDPECHO_XDP_ADDRESS_CHECKS = 2,
    /// An allow list is set: only sources in the `allow` map are answered.
    UDPECHO_XDP_ALLOW_LIST = 4,
    UDPECHO_XDP_RATE_LIMIT = 8,
    UDPECHO_XDP_GLOBAL_BUDGET = 16,
    /// Replies keep the request's TOS byte (traffic class); otherwise they leave with 0, as the socket's do.
    UDPECHO_XDP_KEEP_TOS = 32,
    /// STAMP timestamps in PTPv2's truncated format (else NTP's).
    UDPECHO_XDP_PTP = 64,
    /// The server also listens on IPv4 (a wildcard or IPv4 address) and IPv6.
    UDPECHO_XDP_IPV4 = 128,
    UDPECHO_XDP_IPV6 = 256,
    /// Loopback sources are rate-limited too (they never are by default).
    UDPECHO_XDP_LIMIT_LOOPBACK = 512,
    /// `maximum_size` is set (a maximum of 0 answers only empty datagrams).
    UDPECHO_XDP_MAXIMUM_SIZE = 1024,
    /// A deny list is set (the `deny` map is looked up).
    UDPECHO_XDP_DENY_LIST = 2048,
    /// The host's clock is synchronized to an external source (STAMP's Timestamp Information TLV).
    UDPECHO_XDP_SYNCHRONIZED = 4096,
    /// Some interface has an IPv4 broadcast address (the `local` map holds them).
    UDPECHO_XDP_BROADCASTS = 8192,
    /// STAMP: a Class of Service TLV's DSCP is honoured (such packets go up: the sockets set the reply's DSCP).
    UDPECHO_XDP_HONOUR_COS = 16384,
    /// The guards' clock is the kernel's coarse one (a tick's resolution, no clock read): set when every token
    /// bucket holds many ticks' refill, where a tick late changes nothing; STAMP's timestamps never use it.
    UDPECHO_XDP_COARSE_CLOCK = 32768,
};

/// The addresses a wildcard server's configuration holds in place (see `local_addresses`).
#define UDPECHO_XDP_LOCAL_SLOTS 8

/// The program's configuration: the one entry of its `config` map. Addresses are 16 bytes, IPv4 mapped into IPv6
/// (::ffff:a.b.c.d), in network order; everything else in host order.
struct udpecho_xdp_config {
    __u8 address[16];
    __u32 flags;
    __u16 port;
    __u8 mode;
    /// Loop detector: identical datagrams in a row from one address and port that are still answered; 0 is off.
    __u8 loop_limit_set;
    __u32 loop_limit;
    /// Largest payload answered (with UDPECHO_XDP_MAXIMUM_SIZE).
    __u32 maximum_size;
    /// Rate limiter: the masks that make one source of an address (its prefix: IPv4's, mapped, and IPv6's), as the
    /// address's two 64-bit words are in memory.
    __u64 rate_mask4[2];
    __u64 rate_mask6[2];
    /// Token buckets count in picotokens: a rate of r replies a second adds r * 1000 picotokens a nanosecond.
    __u64 rate_per_ns;
    __u64 burst;
    /// The global budget, per CPU (each CPU has its share, as each of the socket path's threads has).
    __u64 global_rate_per_ns;
    __u64 global_burst;
    /// The nanoseconds that refill an empty bucket: burst / rate + 1.
    __u64 rate_fill;
    __u64 global_fill;
    /// The ports the kernel gives clients (an IPv6 datagram "from" one of this host's addresses on another port is
    /// forged).
    __u32 ephemeral_low;
    __u32 ephemeral_high;
    /// CLOCK_REALTIME less CLOCK_MONOTONIC, in ns, refreshed by the server every second (STAMP's timestamps).
    __s64 realtime_offset;
    /// TAI less UTC, in seconds (PTP timestamps), and the STAMP error estimate field as sent (network order).
    __s32 tai_offset;
    __u16 error_estimate;
    __u16 reserved;
    /// The tables' sets less one (their counts are powers of two), and the key of the hash that picks a source's
    /// set (random per server: a sender who does not know it cannot aim many sources at one set).
    __u32 loop_set_mask;
    __u32 rate_set_mask;
    __u64 hash_key[2];
    /// A wildcard server's own addresses (those of the `local` map with UDPECHO_XDP_LOCAL_ADDRESS), compared in place
    /// with a datagram's destination: cheaper than the map's hash lookup. More than UDPECHO_XDP_LOCAL_SLOTS: the
    /// count says UDPECHO_XDP_LOCAL_SLOTS + 1 and the program looks in the map.
    __u32 local_count;
    __u32 reserved2;
    __u64 local_addresses[UDPECHO_XDP_LOCAL_SLOTS][2];
};

/// Flags of the `local` map's values: which of this host's addresses a source or destination is.
enum udpecho_xdp_local { UDPECHO_XDP_LOCAL_ADDRESS = 1, UDPECHO_XDP_LOCAL_BROADCAST = 2 };

/// A key of the `allow` and `deny` maps (longest-prefix match): the prefix length counts the mapped form's 96 bits
/// for IPv4.
struct udpecho_xdp_prefix {
    __u32 length;
    __u8 address[16];
};

/// One source of the loop detector's table: its address and port, the fingerprint of its last datagram, how many
/// identical ones came in a row (0: an empty slot), and when the last came.
struct udpecho_xdp_loop {
    __u8 address[16];
    __u16 port;
    __u16 reserved;
    __u32 run;
    __u64 fingerprint;
    __u64 last;
};

/// A set of the loop detector's table: 4 slots (the table is 4-way set-associative, as the socket path's is).
struct udpecho_xdp_loop_set {
    struct udpecho_xdp_loop slot[4];
};

/// A token bucket (the rate limiter's, and the global budget's).
struct udpecho_xdp_bucket {
    __u64 tokens;
    __u64 last;
};

/// One source prefix of the rate limiter's table and its bucket (`bucket.last` 0: an empty slot).
struct udpecho_xdp_rate {
    __u8 prefix[16];
    struct udpecho_xdp_bucket bucket;
};

/// A set of the rate limiter's table: 4 slots.
struct udpecho_xdp_rate_set {
    struct udpecho_xdp_rate slot[4];
};

#endif
