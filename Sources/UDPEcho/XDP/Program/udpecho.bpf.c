// udpecho's XDP program: answers echo datagrams and unauthenticated STAMP test packets to the server's address and
// port in the driver, before the socket layer, with the server's guards; passes everything else up to the socket
// path (XDP_PASS), which answers it as it always does.
//
// Two programs: udpecho_xdp parses the headers (Ethernet, up to two VLAN tags, IPv4 or IPv6, UDP) and tail-calls
// udpecho_answer, which starts from one state whatever the path through them was, so that the verifier checks the
// answer once. For a datagram to the server (its address, or any address of this host for a wildcard server, and
// its port):
//   1. Anything the program does not fully understand goes up, counted by reason: IPv4 options and fragments, IPv6
//      extension headers and fragments, a UDP length that disagrees with the IP length or a datagram past a page
//      or past the frame's first buffer (the program is loaded multi-buffer aware, for jumbo MTUs, and reads only
//      that buffer),
//      a checksum that does not verify (the stack drops it and counts it, as it would have), STAMP test packets
//      shorter than 14 bytes, or than the 44-byte base (a TWAMP-Light sender's) where the frame cannot grow to the
//      reply's size (it does where the driver left room), with a Location TLV of more than MAX_LOCATION_SUBTLVS
//      sub-TLVs, with a Class of Service TLV that --reflect-tos honours or with more than MAX_TLVS TLVs, and every one
//      of a reflector with a key or state.
//   2. The guards, in the socket path's order and with its counters (Sources/UDPEcho/Guards): size, impossible
//      sources, source ports, deny and allow prefixes, the echo-loop detector, the per-source token bucket and the
//      global budget. What a guard catches is dropped here (XDP_DROP), as the socket path would have dropped it.
//   3. The answer, in place: Ethernet, IP and UDP source and destination swapped (VLAN tags kept), a fresh TTL of 64
//      and the TOS byte the socket path's replies have; for STAMP the reflected packet (RFC 8762 §4.3, stateless:
//      the sender's sequence number, T2 at the program's start and T3 at its end from the kernel's clock, the TTL
//      it arrived with) and its TLVs as the socket reflector returns them, the UDP checksum following the change.
//      XDP_TX sends it back out of the interface.
//
// Built with clang's BPF target by the package's build plugin (Plugins/XDPProgram), which embeds the instructions
// and the map relocations into the library; the server loads them with the bpf system call (XDPPath.swift).
// Maps are declared in the "maps" section as five 32-bit words: type, key size, value size, entries, flags.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#include "xdp_shared.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the checksum code assumes a little-endian host"
#endif

#define SEC(name) __attribute__((section(name), used))
#define INLINE static __attribute__((always_inline)) inline
// A BPF-to-BPF function, in the answering program's section (a program's calls stay within its section).
#define SUBPROGRAM static __attribute__((noinline, section("xdp/answer")))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)BPF_FUNC_ktime_get_ns;
static __u64 (*bpf_ktime_get_coarse_ns)(void) = (void *)BPF_FUNC_ktime_get_coarse_ns;
static long (*bpf_tail_call)(void *ctx, void *map, __u32 index) = (void *)BPF_FUNC_tail_call;
static long (*bpf_xdp_load_bytes)(struct xdp_md *ctx, __u32 offset, void *buf, __u32 len) =
    (void *)BPF_FUNC_xdp_load_bytes;
static long (*bpf_xdp_store_bytes)(struct xdp_md *ctx, __u32 offset, void *buf, __u32 len) =
    (void *)BPF_FUNC_xdp_store_bytes;
static long (*bpf_xdp_adjust_tail)(struct xdp_md *ctx, int delta) = (void *)BPF_FUNC_xdp_adjust_tail;
static __u64 (*bpf_xdp_get_buff_len)(struct xdp_md *ctx) = (void *)BPF_FUNC_xdp_get_buff_len;
static __s64 (*bpf_csum_diff)(__be32 *from, __u32 from_size, __be32 *to, __u32 to_size, __wsum seed) =
    (void *)BPF_FUNC_csum_diff;

struct map_def {
    __u32 type, key_size, value_size, max_entries, map_flags;
};

// Entries that depend on the server's settings (the rate table, the prefix lists) are set by the loader.
struct map_def config SEC("maps") = {BPF_MAP_TYPE_ARRAY, 4, sizeof(struct udpecho_xdp_config), 1, 0};
struct map_def counters SEC("maps") = {BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8 * UDPECHO_XDP_COUNTERS, 1, 0};
struct map_def ports SEC("maps") = {BPF_MAP_TYPE_ARRAY, 4, 8, 1024, 0};
struct map_def local SEC("maps") = {BPF_MAP_TYPE_HASH, 16, 4, 1024, 0};
struct map_def allow SEC("maps") = {BPF_MAP_TYPE_LPM_TRIE, sizeof(struct udpecho_xdp_prefix), 4, 1, BPF_F_NO_PREALLOC};
struct map_def deny SEC("maps") = {BPF_MAP_TYPE_LPM_TRIE, sizeof(struct udpecho_xdp_prefix), 4, 1, BPF_F_NO_PREALLOC};
// The loop detector's and the rate limiter's tables: per CPU (as the socket path has them per serving thread),
// 4-way set-associative, a set chosen by a keyed hash (array lookups, which the kernel inlines: no hash map).
struct map_def loops SEC("maps") = {BPF_MAP_TYPE_PERCPU_ARRAY, 4, sizeof(struct udpecho_xdp_loop_set), 1024, 0};
struct map_def rates SEC("maps") = {BPF_MAP_TYPE_PERCPU_ARRAY, 4, sizeof(struct udpecho_xdp_rate_set), 4096, 0};
struct map_def budget SEC("maps") = {BPF_MAP_TYPE_PERCPU_ARRAY, 4, sizeof(struct udpecho_xdp_bucket), 1, 0};

/// What udpecho_xdp found in the headers, for udpecho_answer (one per CPU: a tail call runs on the same CPU, and an
/// XDP program is not preempted by another on it).
struct parsed {
    __u32 l3, udp, length;
    __u8 ipv4, ttl, tos, reserved;
    __u64 addresses, t2;
    __u8 source[16];
    /// reflect_tlvs' finding (looking): the first Location TLV's value offset, and its length above 16 bits; 0 for none.
    __u32 location;
    __u32 reserved2;
};
struct map_def scratch SEC("maps") = {BPF_MAP_TYPE_PERCPU_ARRAY, 4, sizeof(struct parsed), 1, 0};
/// The answering program, at index 0 (the loader puts it there).
struct map_def programs SEC("maps") = {BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 1, 0};

#define ETH_P_8021Q_BE 0x0081
#define ETH_P_8021AD_BE 0xa888
#define ETH_P_IP_BE 0x0008
#define ETH_P_IPV6_BE 0xdd86
#define ONE_TOKEN 1000000000000ULL
#define LOOP_WINDOW 1000000000ULL
#define STAMP_LOOP_WINDOW 60000000000LL
#define NTP_EPOCH_OFFSET 2208988800ULL
#define SHORTEST_TEST_PACKET 14  // the socket reflector's StampLayout.shortestTestPacket
// The longest UDP datagram answered here: a frame in one buffer (this program does not take multi-buffer frames) is
// at most a page.
#define MAX_UDP_LENGTH 4096

INLINE __u16 swap16(__u16 x) { return (__u16)((x >> 8) | (x << 8)); }

// The counters: one per-CPU entry of UDPECHO_XDP_COUNTERS words, looked up once per packet (`tally`).
#define COUNT(index, value)                        \
    do {                                           \
        if (tally) tally[(index)] += (value);      \
    } while (0)
#define PASS(reason) ({ COUNT(reason, 1); XDP_PASS; })
#define DROP(reason) ({ COUNT(reason, 1); XDP_DROP; })

/// Adds to `sum` the last `count & 3` bytes of a run whose length is a multiple of 4 up to `p`: a 16-bit word, then
/// a byte (the first of a word in network order: the low byte on this host). Nonzero if the packet is shorter.
INLINE int add_last_bytes(__u8 *p, void *end, __u32 count, __u64 *sum) {
    if (count & 2) {
        if ((void *)(p + 2) > end) return 1;
        *sum += *(__u16 *)p;
        p += 2;
    }
    if (count & 1) {
        if ((void *)(p + 1) > end) return 1;
        *sum += *p;
    }
    return 0;
}

/// The ones'-complement sum (unfolded) of `len` bytes of the frame from `offset`, read in place: blocks of 512 bytes, then
/// the rest (after a block, its words through a window; else in pieces of 256, 128... 4), then 2 and 1, each access a constant size the verifier checks against the packet's
/// end. A function of its own: its paths (a block count and a piece pattern) end in its return value, and do not
/// multiply the caller's. -1 if the packet is shorter than `len`.
SUBPROGRAM __s64 sum_packet(struct xdp_md *ctx, __u32 offset, __u32 len) {
    // The pointer is made here from the frame's start and an offset (not passed in): its range checks then belong
    // to it alone, and leave the caller's pointers as they were, so that the caller's paths after the call fold.
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    if (offset > 128) return -1;
    __u8 *p = data + offset;
    __s64 sum = 0;
    __u32 blocks = len >> 9;
    for (int i = 0; i < MAX_UDP_LENGTH / 512; i++) {
        if (i >= blocks) break;
        if ((void *)(p + 512) > end) return -1;
        sum = bpf_csum_diff(0, 0, (__be32 *)p, 512, (__wsum)sum);
        if (sum < 0) return -1;
        p += 512;
    }
    __u32 rest = len & 511;
    if (blocks > 0 && rest >= 4) {
        // After a block, the rest's whole words in two calls, not one a piece: the 512 bytes that end where they end
        // (a window reaching back over bytes already summed), less the window's first 512 - words bytes.
        __u32 words = rest & ~3U;
        __u32 window = offset + (blocks << 9) + words - 512;
        asm volatile("" : "+r"(window));
        if (window > 128 + MAX_UDP_LENGTH) return -1;
        __u8 *w = data + window;
        if ((void *)(w + 512) > end) return -1;
        sum = bpf_csum_diff(0, 0, (__be32 *)w, 512, (__wsum)sum);
        if (sum < 0) return -1;
        __u32 overlap = 512 - words;
        asm volatile("" : "+r"(overlap));
        if (overlap > 508) return -1;
        sum = bpf_csum_diff((__be32 *)w, overlap, 0, 0, (__wsum)sum);
        if (sum < 0) return -1;
        p = w + 512;
        rest &= 3;
    }
#define PIECE(n)                                                       \
    if (rest & n) {                                                    \
        if ((void *)(p + n) > end) return -1;                          \
        sum = bpf_csum_diff(0, 0, (__be32 *)p, n, (__wsum)sum);        \
        if (sum < 0) return -1;                                        \
        p += n;                                                        \
    }
    PIECE(256) PIECE(128) PIECE(64) PIECE(32) PIECE(16) PIECE(8) PIECE(4)
#undef PIECE
    __u64 total = (__u32)sum;
    return add_last_bytes(p, end, rest, &total) ? -1 : (__s64)total;
}

INLINE __u16 fold(__u64 sum) {
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)sum;
}

/// The ones'-complement sum, folded, of the UDP datagram at frame offset `offset` (`len` bytes, header included) and its
/// pseudo-header, whose addresses' sum is `addresses`: 0xffff when the checksum in it verifies; -1 if the packet is
/// shorter than `len`.
INLINE __s64 udp_sum(struct xdp_md *ctx, __u32 offset, __u32 len, __u64 addresses) {
    __u64 pseudo = addresses + swap16(IPPROTO_UDP) + swap16((__u16)len);
    __s64 sum = sum_packet(ctx, offset, len);
    return sum < 0 ? -1 : fold((__u64)sum + pseudo);
}

/// udp_sum for a datagram of at most DIRECT_SUM bytes, read in place word by word: no helper call, no copy. A
/// function of its own for the same reason as sum_packet. -1 if the packet is shorter than `len`.
#define DIRECT_SUM 256
SUBPROGRAM __s64 udp_sum_direct(struct xdp_md *ctx, __u32 offset, __u32 len, __u64 addresses) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    if (offset > 128) return -1;
    void *udp = data + offset;
    __u64 sum = addresses + swap16(IPPROTO_UDP) + swap16((__u16)len);
    // 16 bytes (four 32-bit words) a range check, then 8 and 4, then the last bytes.
    __u32 chunks = len >> 4;
    for (int i = 0; i < DIRECT_SUM / 16; i++) {
        if (i >= chunks) break;
        __u32 *word = (__u32 *)udp + i * 4;
        asm volatile("" : "+r"(word));  // no trip count worked out from the packet's end: the verifier refuses it
        if ((void *)(word + 4) > end) return -1;
        sum += (__u64)word[0] + word[1] + word[2] + word[3];
    }
    __u32 *word = (__u32 *)((__u8 *)udp + (chunks << 4));
    asm volatile("" : "+r"(word));
    if (len & 8) {
        if ((void *)(word + 2) > end) return -1;
        sum += (__u64)word[0] + word[1];
        word += 2;
    }
    if (len & 4) {
        if ((void *)(word + 1) > end) return -1;
        sum += word[0];
        word += 1;
    }
    return add_last_bytes((__u8 *)word, end, len, &sum) ? -1 : fold(sum);
}

INLINE __u64 sum_words(__u16 *w, int n) {
    __u64 sum = 0;
#pragma unroll
    for (int i = 0; i < 8; i++)
        if (i < n) sum += w[i];
    return sum;
}

/// A 16-byte address in the maps' form: IPv4 mapped into IPv6. Written as the two 64-bit words it is read as (smaller
/// stores read back as a larger load stall the CPU: the store cannot be forwarded).
INLINE void map_ipv4(__u64 out[2], __u32 address) {
    out[0] = 0;
    out[1] = 0xffff0000ULL | ((__u64)address << 32);  // bytes 8-15: 00 00 ff ff a b c d (little-endian words)
}

/// An IPv6 address from the packet, written as two 64-bit words (see map_ipv4).
INLINE void copy_ipv6(__u64 out[2], const struct in6_addr *address) {
    const __u32 *w = (const __u32 *)address;
    out[0] = (__u64)w[0] | ((__u64)w[1] << 32);
    out[1] = (__u64)w[2] | ((__u64)w[3] << 32);
}

INLINE int same16(const __u8 *a, const __u8 *b) {
    const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
    return x[0] == y[0] && x[1] == y[1];
}

INLINE __u64 mix(__u64 hash, __u64 word) {
    hash = (hash ^ word) * 0xBF58476D1CE4E5B9ULL;
    return hash ^ (hash >> 31);
}

/// Whether `address` (mapped form) is one of this host's, for a wildcard server: compared in place with the
/// configuration's copy of them (a hash lookup costs more), or looked up in the `local` map when there are more.
INLINE int is_local(struct udpecho_xdp_config *cfg, const __u64 address[2]) {
    __u32 count = cfg->local_count;
    if (count <= UDPECHO_XDP_LOCAL_SLOTS) {
#pragma unroll
        for (int i = 0; i < UDPECHO_XDP_LOCAL_SLOTS; i++) {
            if (i < count && cfg->local_addresses[i][0] == address[0] && cfg->local_addresses[i][1] == address[1])
                return 1;
        }
        return 0;
    }
    __u32 *flags = bpf_map_lookup_elem(&local, address);
    return flags && (*flags & UDPECHO_XDP_LOCAL_ADDRESS);
}

/// The loop detector's fingerprint: the length and up to 64 bytes at each end of the payload (at `offset` in the
/// frame), each end read whole into the stack and mixed as eight 64-bit words (zeros past the end).
SUBPROGRAM __u64 fingerprint(struct xdp_md *ctx, __u32 offset, __u32 len) {
    __u64 words[8];
    __u64 hash = 0x9E3779B97F4A7C15ULL ^ len;
    __u32 head = len > 64 ? 64 : len;
    __builtin_memset(words, 0, sizeof(words));
    asm volatile("" : "+r"(head));
    if (head > 0 && head <= 64 && bpf_xdp_load_bytes(ctx, offset, words, head) != 0) return hash;
#pragma unroll
    for (int i = 0; i < 8; i++) hash = mix(hash, words[i]);
    if (len > 64) {
        __u32 start = len > 128 ? len - 64 : 64;
        __u32 tail = len - start;
        __builtin_memset(words, 0, sizeof(words));
        asm volatile("" : "+r"(tail));
        if (tail > 0 && tail <= 64 && bpf_xdp_load_bytes(ctx, offset + start, words, tail) != 0) return hash;
#pragma unroll
        for (int i = 0; i < 8; i++) hash = mix(hash, words[i]);
    }
    return hash;
}

// reflect_tlvs' arguments, packed (a BPF function takes five): the mode, and what the test packet arrived with.
#define TLV_WRITE 0x100          // write (else only look: may XDP answer this packet?)
#define TLV_SYNCHRONIZED 0x200   // the host's clock is synchronized (Timestamp Information)
#define TLV_HONOUR_COS 0x400     // a Class of Service TLV's DSCP is honoured (--reflect-tos): the sockets do that
#define TLV_IPV4 0x800          // the packet is IPv4 (Location's address sub-TLVs); its IP header at (info >> 16) & 0xff
#define TLV_RESULT_PASS (1ULL << 32)
#define MAX_TLVS 8
#define MAX_LOCATION_SUBTLVS 4

/// The ones'-complement change (numeric, network order) of one byte at `offset` going from `before` to `after`:
/// the high byte of its 16-bit word when at an even distance from the UDP header, the low one otherwise.
INLINE __u32 byte_delta(__u32 offset, __u32 udp, __u8 before, __u8 after) {
    if (((offset - udp) & 1) == 0) return ((~((__u32)before << 8)) & 0xffff) + ((__u32)after << 8);
    return ((~(__u32)before) & 0xff) + 0xff00 + after;
}

/// The ones'-complement change (numeric, network order) of `n` bytes (even) at frame offset `at` going from `before`
/// to `after`: summed as 16-bit words, then byte-swapped when `at` is an odd distance from the UDP header (the words
/// of the checksum straddle them).
INLINE __u32 block_delta(__u32 at, __u32 udp, const __u8 *before, const __u8 *after, int n) {
    __u64 sum = 0;
#pragma unroll
    for (int i = 0; i < 16; i += 2) {
        if (i < n) {
            __u32 old = ((__u32)before[i] << 8) | before[i + 1];
            __u32 new = ((__u32)after[i] << 8) | after[i + 1];
            sum += (~old & 0xffff) + new;
        }
    }
    __u32 folded = fold(sum);
    return ((at - udp) & 1) ? (((folded & 0xff) << 8) | (folded >> 8)) : folded;
}

/// The Location TLV's M flag (its header 4 bytes before `value`): the checksum's change, or TLV_RESULT_PASS.
INLINE __u64 mark_location_malformed(struct xdp_md *ctx, __u32 value, __u32 udp) {
    __u8 flags, marked;
    if (bpf_xdp_load_bytes(ctx, value - 4, &flags, 1) != 0) return TLV_RESULT_PASS;
    marked = flags | 0x40;
    if (bpf_xdp_store_bytes(ctx, value - 4, &marked, 1) != 0) return TLV_RESULT_PASS;
    return byte_delta(value - 4, udp, flags, marked);
}

/// A Location TLV's value (`length` bytes at frame offset `value`), as the socket reflector fills it
/// (StampTLV.fillLocation, RFC 8972 §4.2): the ports the packet arrived with, and each address sub-TLV (generic or
/// specific, source or destination) answered with the specific type of the packet's family and its address (IPv4:
/// the address, then 12 zero bytes); MAC sub-TLVs as they came, unknown types flagged U, a wrong length M; the
/// Location TLV itself flagged M when its sub-TLVs do not fill it exactly. Returns the checksum's change in the low 32
/// bits, or TLV_RESULT_PASS for more than MAX_LOCATION_SUBTLVS sub-TLVs (the sockets answer). Without TLV_WRITE it
/// only looks. Called once a packet (for its first Location TLV), not from reflect_tlvs' loop: the verifier checks it
/// once, not once a TLV.
SUBPROGRAM __u64 fill_location(struct xdp_md *ctx, __u32 value, __u32 length, __u32 bounds, __u32 info) {
    __u32 udp = bounds & 0xffff, l3 = (info >> 16) & 0xff;
    __u64 delta = 0;
    if (value < 4 || value > 128 + MAX_UDP_LENGTH || length > MAX_UDP_LENGTH) return TLV_RESULT_PASS;
    if (length < 4) return (info & TLV_WRITE) ? mark_location_malformed(ctx, value, udp) : 0;
    if (info & TLV_WRITE) {
        __u8 ports[4], before[4];
        if (bpf_xdp_load_bytes(ctx, udp, ports, 4) != 0 || bpf_xdp_load_bytes(ctx, value, before, 4) != 0)
            return TLV_RESULT_PASS;
        __u8 after[4] = {ports[2], ports[3], ports[0], ports[1]};  // destination port, then source port
        if (bpf_xdp_store_bytes(ctx, value, after, 4) != 0) return TLV_RESULT_PASS;
        delta += block_delta(value, udp, before, after, 4);
    }
    __u32 offset = value + 4, end = value + length;
    for (int i = 0; i < MAX_LOCATION_SUBTLVS + 1; i++) {
        if (offset + 4 > end) break;
        if (i == MAX_LOCATION_SUBTLVS) return TLV_RESULT_PASS;
        __u8 header[4];
        if (bpf_xdp_load_bytes(ctx, offset, header, 4) != 0) return TLV_RESULT_PASS;
        __u8 type = header[1];
        __u32 size = ((__u32)header[2] << 8) | header[3];
        if (offset + 4 + size > end) {
            if (!(info & TLV_WRITE)) return 0;
            __u64 marked = mark_location_malformed(ctx, value, udp);
            return (marked & TLV_RESULT_PASS) ? marked : delta + marked;
        }
        __u8 flag = 0;
        if (type >= 4 && type <= 9) {
            if (size != 16) {
                flag = 0x40;
            } else if (info & TLV_WRITE) {
                // The address the packet arrived with, from its IP header (the stack is short: not kept).
                int destination = type <= 6, ipv4 = (info & TLV_IPV4) != 0;
                __u8 answered = destination ? (ipv4 ? 5 : 6) : (ipv4 ? 8 : 9);
                __u8 before[16], after[16];
                __builtin_memset(after, 0, sizeof(after));
                if (ipv4 ? bpf_xdp_load_bytes(ctx, l3 + (destination ? 16 : 12), after, 4)
                         : bpf_xdp_load_bytes(ctx, l3 + (destination ? 24 : 8), after, 16))
                    return TLV_RESULT_PASS;
                if (bpf_xdp_load_bytes(ctx, offset + 4, before, 16) != 0) return TLV_RESULT_PASS;
                if (bpf_xdp_store_bytes(ctx, offset + 4, after, 16) != 0) return TLV_RESULT_PASS;
                if (bpf_xdp_store_bytes(ctx, offset + 1, &answered, 1) != 0) return TLV_RESULT_PASS;
                delta += block_delta(offset + 4, udp, before, after, 16) + byte_delta(offset + 1, udp, type, answered);
            }
        } else if (type >= 1 && type <= 3) {
            if (size != 8) flag = 0x40;
        } else {
            flag = 0x80;
        }
        if (flag && (info & TLV_WRITE)) {
            __u8 marked = header[0] | flag;
            if (bpf_xdp_store_bytes(ctx, offset, &marked, 1) != 0) return TLV_RESULT_PASS;
            delta += byte_delta(offset, udp, header[0], marked);
        }
        offset += 4 + size;
    }
    if (offset == end || !(info & TLV_WRITE)) return delta;
    __u64 marked = mark_location_malformed(ctx, value, udp);
    return (marked & TLV_RESULT_PASS) ? marked : delta + marked;
}

/// The TLVs of a STAMP test packet, from frame offset `start` to `bounds >> 16`, the UDP header at `bounds & 0xffff`,
/// as the socket reflector returns them (Sources/UDPEcho/STAMP/StampTLV.swift): Extra Padding as it came, Timestamp
/// Information filled in, Class of Service with DSCP2 and ECN (what the packet arrived with: `info & 0xff`) and RP 1
/// (not honoured), Location filled in (fill_location), an HMAC TLV and unknown types flagged U (unrecognized), a TLV
/// that runs past the end flagged M (malformed) and the rest returned as it came. More than MAX_TLVS go up to the
/// sockets (TLV_RESULT_PASS). Without TLV_WRITE it only looks. Returns the checksum's change (numeric, network order) in
/// the low 32 bits. Every access is a fixed size through bpf_xdp_load_bytes/store_bytes, so the offsets are plain
/// numbers to the verifier and the loop's paths fold together.
SUBPROGRAM __u64 reflect_tlvs(struct xdp_md *ctx, __u32 start, __u32 bounds, __u32 info, __u32 *location) {
    __u32 end = bounds >> 16, udp = bounds & 0xffff, offset = start;
    __u64 delta = 0;
    for (int i = 0; i < MAX_TLVS + 1; i++) {
        if (offset + 4 > end) return delta;
        if (i == MAX_TLVS) return TLV_RESULT_PASS;
        __u8 header[4];
        if (bpf_xdp_load_bytes(ctx, offset, header, 4) != 0) return TLV_RESULT_PASS;
        __u8 type = header[1];
        __u32 length = ((__u32)header[2] << 8) | header[3];
        __u32 value = offset + 4;
        __u8 flag = 0;
        if (value + length > end) {
            flag = 0x40;  // M, and what follows is returned as it came
        } else if (type == 4 && (info & TLV_HONOUR_COS)) {
            return TLV_RESULT_PASS;  // a Class of Service to honour: the sockets set the reply's DSCP
        } else if (type == 2) {
            // Location: left to fill_location, which the caller calls once (for the first; another goes up to the
            // sockets). Noted in the scratch entry, not in a register: the verifier does not follow map memory, so
            // the loop's paths do not multiply by it.
            if (!(info & TLV_WRITE)) {
                if (*location != 0) return TLV_RESULT_PASS;
                *location = (value & 0xffff) | (length << 16);
            }
        } else if (type == 3 || type == 4) {
            if (length != 4) {
                flag = 0x40;
            } else if (info & TLV_WRITE) {
                __u8 word[2], before[2];
                __u32 at = type == 3 ? value + 2 : value;
                if (bpf_xdp_load_bytes(ctx, at, before, 2) != 0) return TLV_RESULT_PASS;
                if (type == 3) {
                    // Ours: NTP-synchronized (1) or the local clock (8); software timestamps in the kernel (2).
                    word[0] = (info & TLV_SYNCHRONIZED) ? 1 : 8;
                    word[1] = 2;
                } else {
                    // DSCP1 (6 bits) kept, DSCP2 (6) and ECN (2) as the packet arrived, RP (2) 1: not honoured.
                    __u16 tos = info & 0xff;
                    __u16 reflected = (((__u16)before[0] << 8) & 0xfc00) | ((tos >> 2) << 4) | ((tos & 3) << 2) | 1;
                    word[0] = reflected >> 8;
                    word[1] = reflected & 0xff;
                }
                if (bpf_xdp_store_bytes(ctx, at, word, 2) != 0) return TLV_RESULT_PASS;
                delta += byte_delta(at, udp, before[0], word[0]) + byte_delta(at + 1, udp, before[1], word[1]);
            }
        } else if (type == 8) {
            flag = length == 16 ? 0x80 : 0x40;  // HMAC: no key here (U); or malformed (M)
        } else if (type != 1) {
            flag = 0x80;  // U
        }
        if (flag && (info & TLV_WRITE)) {
            __u8 marked = header[0] | flag;
            if (bpf_xdp_store_bytes(ctx, offset, &marked, 1) != 0) return TLV_RESULT_PASS;
            delta += byte_delta(offset, udp, header[0], marked);
        }
        if (flag == 0x40 && value + length > end) return delta;
        offset = value + length;
    }
    return delta;
}

/// The hash that picks a source's set in the tables, keyed per server.
INLINE __u32 keyed_hash(struct udpecho_xdp_config *cfg, const __u8 address[16], __u32 port) {
    const __u64 *words = (const __u64 *)address;
    __u64 hash = (words[0] ^ cfg->hash_key[0]) * 0x9E3779B97F4A7C15ULL;
    hash ^= hash >> 29;
    hash = (hash ^ words[1] ^ cfg->hash_key[1]) * 0xBF58476D1CE4E5B9ULL;
    hash ^= hash >> 32;
    hash = (hash ^ port) * 0x94D049BB133111EBULL;
    return (__u32)(hash ^ (hash >> 31));
}

/// A token bucket in picotokens: refilled for the time since it was last used, then one token taken if there is one.
INLINE int take(struct udpecho_xdp_bucket *bucket, __u64 now, __u64 rate, __u64 burst, __u64 fill) {
    // `fill`: the nanoseconds that refill an empty bucket (burst / rate + 1, from the server: no division here).
    // Bursts are at most 9e6 replies and rates 1e12 a second, so `tokens + elapsed * rate` stays in 64 bits.
    if (now > bucket->last) {
        __u64 elapsed = now - bucket->last;
        __u64 tokens = elapsed >= fill ? burst : bucket->tokens + elapsed * rate;
        bucket->tokens = tokens < burst ? tokens : burst;
        bucket->last = now;
    }
    if (bucket->tokens < ONE_TOKEN) return 0;
    bucket->tokens -= ONE_TOKEN;
    return 1;
}

/// guard's answer for a datagram the stack must judge (it goes up): not a counter's index.
#define UDPECHO_XDP_GUARD_PASS 0xffff

/// Why the datagram must not be answered (a UDPECHO_XDP_DROP_ counter, or UDPECHO_XDP_GUARD_PASS), or 0 to answer it: the socket path's
/// SourceGuard.check, in its order.
INLINE __u32 guard(struct udpecho_xdp_config *cfg, __u8 source[16], int ipv4, __u16 port, struct xdp_md *ctx,
                   __u32 payload, __u32 len, __u64 now, __u64 *tally, __u16 check) {
    if ((cfg->flags & UDPECHO_XDP_MAXIMUM_SIZE) && len > cfg->maximum_size) return UDPECHO_XDP_DROP_OVERSIZE;
    __u32 v4 = 0;
    __builtin_memcpy(&v4, source + 12, 4);
    __u8 first = ipv4 ? source[12] : source[0];
    const __u64 *words = (const __u64 *)source;
    int loopback = ipv4 ? first == 127 : (words[0] == 0 && words[1] == 0x0100000000000000ULL);
    // Sources the stack itself never answers (martians: IPv4's multicast, 0/8, 255.255.255.255 and loopback; IPv6's
    // multicast): without the address checks, they go up to it, which drops them as it does for the sockets.
    if (!(cfg->flags & UDPECHO_XDP_ADDRESS_CHECKS)) {
        int unspecified = ipv4 ? first == 0 : (words[0] == 0 && words[1] == 0);
        int multicast = ipv4 ? (first >> 4) == 0xe : first == 0xff;
        if (unspecified || multicast || loopback || (ipv4 && v4 == 0xffffffff)) return UDPECHO_XDP_GUARD_PASS;
    }
    if (cfg->flags & UDPECHO_XDP_ADDRESS_CHECKS) {
        // This host's addresses are looked up only where they matter: an IPv4 source that may be one of its
        // broadcast addresses (there are some), the server's own port, an IPv6 source on a port the kernel does not
        // give clients. A client's usual datagram needs none.
        int ephemeral = port >= cfg->ephemeral_low && port <= cfg->ephemeral_high;
        __u32 flags = 0;
        if ((ipv4 && (cfg->flags & UDPECHO_XDP_BROADCASTS)) || port == cfg->port || (!ipv4 && !ephemeral)) {
            __u32 *local_flags = bpf_map_lookup_elem(&local, source);
            flags = local_flags ? *local_flags : 0;
        }
        int unspecified = ipv4 ? first == 0 : (words[0] == 0 && words[1] == 0);
        int multicast = ipv4 ? (first >> 4) == 0xe : first == 0xff;
        if (unspecified || multicast || (ipv4 && v4 == 0xffffffff) || (flags & UDPECHO_XDP_LOCAL_BROADCAST))
            return UDPECHO_XDP_DROP_SOURCE_ADDRESS;
        // A loopback source never arrives on an interface that XDP runs on: forged.
        if (loopback) return UDPECHO_XDP_DROP_SOURCE_ADDRESS;
        if (!ipv4 && (flags & UDPECHO_XDP_LOCAL_ADDRESS) && !ephemeral)
            return UDPECHO_XDP_DROP_SOURCE_ADDRESS;
        if (port == cfg->port && (flags & UDPECHO_XDP_LOCAL_ADDRESS)) return UDPECHO_XDP_DROP_OWN_ENDPOINT;
    }
    __u32 word = port >> 6;
    __u64 *blocked = bpf_map_lookup_elem(&ports, &word);
    if (blocked && (*blocked >> (port & 63)) & 1) return UDPECHO_XDP_DROP_SOURCE_PORT;
    struct udpecho_xdp_prefix prefix = {.length = 128};
    __builtin_memcpy(prefix.address, source, 16);
    if ((cfg->flags & UDPECHO_XDP_DENY_LIST) && bpf_map_lookup_elem(&deny, &prefix)) return UDPECHO_XDP_DROP_DENIED;
    if ((cfg->flags & UDPECHO_XDP_ALLOW_LIST) && !bpf_map_lookup_elem(&allow, &prefix)) return UDPECHO_XDP_DROP_DENIED;
    if (cfg->loop_limit_set) {
        // Identical datagrams have the same checksum (verified above: it covers every byte), so with the length it
        // is their fingerprint, without reading them again; different ones share it once in 65536, and a loop
        // needs more than the limit in a row. IPv4 without a checksum: the socket path's fingerprint.
        __u64 print = check ? mix(0x9E3779B97F4A7C15ULL ^ len, check) : fingerprint(ctx, payload, len);
        __u32 index = keyed_hash(cfg, source, port) & cfg->loop_set_mask;
        struct udpecho_xdp_loop_set *set = bpf_map_lookup_elem(&loops, &index);
        if (set) {
            // The source's slot, or else an empty one, or else the one seen longest ago.
            int found = -1, victim = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                struct udpecho_xdp_loop *slot = &set->slot[i];
                if (found < 0 && slot->run && slot->port == port && same16(slot->address, source)) found = i;
                if (!slot->run)
                    victim = i;
                else if (set->slot[victim].run && slot->last < set->slot[victim].last)
                    victim = i;
            }
            if (found >= 0) {
                struct udpecho_xdp_loop *slot = &set->slot[found & 3];
                if (slot->fingerprint == print && now - slot->last <= LOOP_WINDOW) {
                    if (slot->run < 0xffffffff) slot->run += 1;
                } else {
                    slot->fingerprint = print;
                    slot->run = 1;
                }
                slot->last = now;
                if (slot->run > cfg->loop_limit) return UDPECHO_XDP_DROP_LOOP;
            } else {
                struct udpecho_xdp_loop *slot = &set->slot[victim & 3];
                __builtin_memcpy(slot->address, source, 16);
                slot->port = port;
                slot->fingerprint = print;
                slot->last = now;
                slot->run = 1;
                if (1 > cfg->loop_limit) return UDPECHO_XDP_DROP_LOOP;
            }
        }
    }
    if (loopback && !(cfg->flags & UDPECHO_XDP_LIMIT_LOOPBACK)) return 0;
    if (cfg->flags & UDPECHO_XDP_RATE_LIMIT) {
        __u64 key_words[2];
        const __u64 *mask = ipv4 ? cfg->rate_mask4 : cfg->rate_mask6;
        key_words[0] = words[0] & mask[0];
        key_words[1] = words[1] & mask[1];
        __u8 *key = (__u8 *)key_words;
        __u32 index = keyed_hash(cfg, key, 0) & cfg->rate_set_mask;
        struct udpecho_xdp_rate_set *set = bpf_map_lookup_elem(&rates, &index);
        if (set) {
            int found = -1, victim = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                struct udpecho_xdp_rate *slot = &set->slot[i];
                if (found < 0 && slot->bucket.last && same16(slot->prefix, key)) found = i;
                if (!slot->bucket.last)
                    victim = i;
                else if (set->slot[victim].bucket.last && slot->bucket.last < set->slot[victim].bucket.last)
                    victim = i;
            }
            struct udpecho_xdp_rate *slot = &set->slot[(found >= 0 ? found : victim) & 3];
            if (found < 0) {
                // A newcomer takes over the bucket of the source it displaces, refilled for the time since (the
                // socket path's RateTable): sources that share a set cannot evict one another back to full bursts.
                if (slot->bucket.last) {
                    COUNT(UDPECHO_XDP_RATE_EVICTED, 1);
                } else {
                    slot->bucket.tokens = cfg->burst;
                    slot->bucket.last = now;
                    COUNT(UDPECHO_XDP_RATE_NEW_SOURCE, 1);
                }
                __builtin_memcpy(slot->prefix, key, 16);
            }
            if (!take(&slot->bucket, now, cfg->rate_per_ns, cfg->burst, cfg->rate_fill)) return UDPECHO_XDP_DROP_RATE_LIMITED;
        }
    }
    if (cfg->flags & UDPECHO_XDP_GLOBAL_BUDGET) {
        __u32 zero = 0;
        struct udpecho_xdp_bucket *bucket = bpf_map_lookup_elem(&budget, &zero);
        if (bucket && !take(bucket, now, cfg->global_rate_per_ns, cfg->global_burst, cfg->global_fill))
            return UDPECHO_XDP_DROP_OVER_BUDGET;
    }
    return 0;
}

INLINE __u64 encode_time(struct udpecho_xdp_config *cfg, __u64 monotonic) {
    __u64 ns = (__u64)((__s64)monotonic + cfg->realtime_offset);
    __u64 seconds = ns / 1000000000ULL, rest = ns % 1000000000ULL;
    if (cfg->flags & UDPECHO_XDP_PTP) return ((seconds + (__u64)(__s64)cfg->tai_offset) << 32) | rest;
    return ((seconds + NTP_EPOCH_OFFSET) << 32) | ((rest << 32) / 1000000000ULL);
}

INLINE __s64 decode_time(struct udpecho_xdp_config *cfg, __u64 value) {
    __s64 seconds = (__s64)(value >> 32), low = (__s64)(value & 0xffffffff);
    if (cfg->flags & UDPECHO_XDP_PTP) return (seconds - cfg->tai_offset) * 1000000000LL + low;
    return (seconds - (__s64)NTP_EPOCH_OFFSET) * 1000000000LL + ((low * 1000000000LL) >> 32);
}

/// The base of an unauthenticated reflected packet (RFC 8762 §4.3.1), 44 bytes.
struct stamp_reply {
    __be32 sequence;
    __be64 timestamp;
    __be16 error_estimate;
    __be16 ssid;
    __be64 receive_timestamp;
    __be32 sender_sequence;
    __be64 sender_timestamp;
    __be16 sender_error_estimate;
    __be16 mbz;
    __u8 sender_ttl;
    __u8 mbz2[3];
} __attribute__((packed));

SEC("xdp") int udpecho_xdp(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end) return XDP_PASS;
    __u16 proto = eth->h_proto;
    void *next = eth + 1;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (proto == ETH_P_8021Q_BE || proto == ETH_P_8021AD_BE) {
            if (next + 4 > end) return XDP_PASS;
            proto = *(__u16 *)(next + 2);
            next += 4;
        }
    }
    __u32 zero = 0;
    struct udpecho_xdp_config *cfg = bpf_map_lookup_elem(&config, &zero);
    if (!cfg) return XDP_PASS;
    __u64 *tally = bpf_map_lookup_elem(&counters, &zero);
    // T2 for STAMP, and the guards' clock: the coarse one where it will do (a read of the TSC is a good part of an
    // echo's cost here).
    __u64 t2 = (cfg->flags & UDPECHO_XDP_COARSE_CLOCK) ? bpf_ktime_get_coarse_ns() : bpf_ktime_get_ns();

    struct iphdr *ip4 = 0;
    struct ipv6hdr *ip6 = 0;
    struct udphdr *udp;
    __u64 source_words[2], destination_words[2];
    __u8 *source = (__u8 *)source_words, *destination = (__u8 *)destination_words;
    __u32 ip_payload;
    __u8 ttl, tos;
    __u64 addresses;
    if (proto == ETH_P_IP_BE) {
        if (!(cfg->flags & UDPECHO_XDP_IPV4)) return XDP_PASS;
        ip4 = next;
        if ((void *)(ip4 + 1) > end || ip4->version != 4 || ip4->protocol != IPPROTO_UDP || ip4->ihl < 5)
            return XDP_PASS;
        udp = (void *)ip4 + ((__u32)ip4->ihl & 0xf) * 4;
        if ((void *)(udp + 1) > end) return XDP_PASS;
        int later_fragment = (swap16(ip4->frag_off) & 0x1fff) != 0;
        if (later_fragment || udp->dest != swap16(cfg->port)) return XDP_PASS;
        map_ipv4(source_words, ip4->saddr);
        map_ipv4(destination_words, ip4->daddr);
        if ((cfg->flags & UDPECHO_XDP_BOUND) ? !same16(destination, cfg->address) : ((ip4->daddr & 0xff) == 127))
            return XDP_PASS;
        if (!(cfg->flags & UDPECHO_XDP_BOUND) && !is_local(cfg, destination_words)) return XDP_PASS;
        COUNT(UDPECHO_XDP_SEEN, 1);
        if (swap16(ip4->frag_off) & 0x2000) return PASS(UDPECHO_XDP_PASS_FRAGMENT);
        if (ip4->ihl != 5) return PASS(UDPECHO_XDP_PASS_OPTIONS);
        // The stack drops a header whose checksum fails; it is not answered here either.
        if (fold(sum_words((__u16 *)ip4, 8) + sum_words((__u16 *)ip4 + 8, 2)) != 0xffff)
            return PASS(UDPECHO_XDP_PASS_CHECKSUM);
        __u32 total = swap16(ip4->tot_len);
        if (total < 28) return PASS(UDPECHO_XDP_PASS_OTHER);
        ip_payload = total - 20;
        ttl = ip4->ttl;
        tos = ip4->tos;
        addresses = (__u64)(ip4->saddr & 0xffff) + (ip4->saddr >> 16) + (ip4->daddr & 0xffff) + (ip4->daddr >> 16);
    } else if (proto == ETH_P_IPV6_BE) {
        if (!(cfg->flags & UDPECHO_XDP_IPV6)) return XDP_PASS;
        ip6 = next;
        if ((void *)(ip6 + 1) > end || ip6->version != 6) return XDP_PASS;
        __u8 header = ip6->nexthdr;
        void *after = ip6 + 1;
        __u32 reason = 0;
        if (header == 0 || header == 43 || header == 60 || header == 44) {
            // One extension header (or a fragment header) is read only to know whether the datagram is ours.
            if (after + 8 > end) return XDP_PASS;
            __u8 *extension = after;
            if (header == 44 && (swap16(*(__u16 *)(extension + 2)) & 0xfff8) != 0) return XDP_PASS;
            reason = header == 44 ? UDPECHO_XDP_PASS_FRAGMENT : UDPECHO_XDP_PASS_OPTIONS;
            after += header == 44 ? 8 : ((__u32)extension[1] + 1) * 8;
            header = extension[0];
        }
        if (header != IPPROTO_UDP) return XDP_PASS;
        udp = after;
        if ((void *)(udp + 1) > end || udp->dest != swap16(cfg->port)) return XDP_PASS;
        copy_ipv6(source_words, &ip6->saddr);
        copy_ipv6(destination_words, &ip6->daddr);
        if (cfg->flags & UDPECHO_XDP_BOUND) {
            if (!same16(destination, cfg->address)) return XDP_PASS;
        } else {
            const __u64 *d = (const __u64 *)destination;
            if ((d[0] == 0 && d[1] == 0x0100000000000000ULL) || !is_local(cfg, destination_words)) return XDP_PASS;
        }
        // An IPv4-mapped source on the wire is dropped by the stack (RFC 4942); it is not ours to judge.
        const __u64 *s = (const __u64 *)source;
        if (s[0] == 0 && (__u32)s[1] == 0xffff0000) return XDP_PASS;
        COUNT(UDPECHO_XDP_SEEN, 1);
        if (reason) return PASS(reason);
        ip_payload = swap16(ip6->payload_len);
        ttl = ip6->hop_limit;
        tos = (__u8)((ip6->priority << 4) | (ip6->flow_lbl[0] >> 4));
        addresses = 0;
        __u16 *words = (__u16 *)&ip6->saddr;
#pragma unroll
        for (int i = 0; i < 16; i++) addresses += words[i];
    } else {
        return XDP_PASS;
    }

    __u32 length = swap16(udp->len);
    if (length < 8 || length != ip_payload || (void *)udp + length > end) return PASS(UDPECHO_XDP_PASS_OTHER);
    if (length > MAX_UDP_LENGTH) return PASS(UDPECHO_XDP_PASS_OTHER);
    // The rest is the answering program's: what it needs goes in the scratch entry, and a tail call goes there. It
    // starts from one state whatever the path through the headers was (VLAN tags, IPv4 or IPv6), so the verifier
    // checks its work once, not once per path.
    struct parsed *parsed = bpf_map_lookup_elem(&scratch, &zero);
    if (!parsed) return XDP_PASS;
    parsed->l3 = (__u32)(next - data);
    parsed->udp = (__u32)((void *)udp - data);
    parsed->length = length;
    parsed->ipv4 = ip4 != 0;
    parsed->ttl = ttl;
    parsed->tos = tos;
    parsed->addresses = addresses;
    parsed->t2 = t2;
    ((__u64 *)parsed->source)[0] = source_words[0];
    ((__u64 *)parsed->source)[1] = source_words[1];
    bpf_tail_call(ctx, &programs, 0);
    return XDP_PASS;  // no answering program (cannot happen once loaded): the sockets answer
}

/// The answering program, reached by a tail call from udpecho_xdp for a UDP datagram to the server whose headers
/// are understood: checks its checksum, runs the guards, and answers it (an echo, or a STAMP reflection with its
/// TLVs), or passes it up or drops it.
SEC("xdp/answer") int udpecho_answer(struct xdp_md *ctx) {
    __u32 zero = 0;
    struct udpecho_xdp_config *cfg = bpf_map_lookup_elem(&config, &zero);
    struct parsed *parsed = bpf_map_lookup_elem(&scratch, &zero);
    if (!cfg || !parsed) return XDP_PASS;
    __u64 *tally = bpf_map_lookup_elem(&counters, &zero);
    __u32 l3 = parsed->l3, udp_offset = parsed->udp, length = parsed->length;
    int ipv4 = parsed->ipv4;
    __u64 addresses = parsed->addresses, t2 = parsed->t2;
    if (l3 > 64 || udp_offset > 128 || length < 8 || length > MAX_UDP_LENGTH) return XDP_PASS;
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct udphdr *udp = data + udp_offset;
    if ((void *)(udp + 1) > end) return XDP_PASS;
    // A datagram whose checksum fails never reaches the socket: not answered here either. IPv4's checksum 0 means
    // none; IPv6's is mandatory (the stack drops 0).
    __u16 received_check = udp->check;
    if (received_check != 0 || !ipv4) {
        __s64 sum = length <= DIRECT_SUM ? udp_sum_direct(ctx, udp_offset, length, addresses)
                                          : udp_sum(ctx, udp_offset, length, addresses);
        if (received_check == 0 || sum != 0xffff) return PASS(UDPECHO_XDP_PASS_CHECKSUM);
    }
    __u32 size = length - 8;
    if (cfg->mode == UDPECHO_XDP_MODE_PASS) return PASS(UDPECHO_XDP_PASS_STAMP);
    __u32 tlv_info = parsed->tos | ((cfg->flags & UDPECHO_XDP_SYNCHRONIZED) ? TLV_SYNCHRONIZED : 0) |
                     ((cfg->flags & UDPECHO_XDP_HONOUR_COS) ? TLV_HONOUR_COS : 0) | (ipv4 ? TLV_IPV4 : 0) | (l3 << 16);
    __u32 tlv_bounds = ((udp_offset + length) << 16) | udp_offset;
    __u32 tlv_start = udp_offset + 8 + sizeof(struct stamp_reply);
    int stamp = cfg->mode == UDPECHO_XDP_MODE_STAMP;
    if (stamp) {
        // The base packet's 44 bytes and TLVs after them; a TWAMP-Light sender's shorter packet (14 bytes at
        // least: the socket reflector drops a shorter one) is answered with the base packet, the frame grown below.
        if (size < SHORTEST_TEST_PACKET) return PASS(UDPECHO_XDP_PASS_STAMP);
        if (size > sizeof(struct stamp_reply)) {
            parsed->location = 0;
            if (reflect_tlvs(ctx, tlv_start, tlv_bounds, tlv_info, &parsed->location) & TLV_RESULT_PASS)
                return PASS(UDPECHO_XDP_PASS_STAMP);
            __u32 location = parsed->location;
            if (location && (fill_location(ctx, location & 0xffff, location >> 16, tlv_bounds, tlv_info) & TLV_RESULT_PASS))
                return PASS(UDPECHO_XDP_PASS_STAMP);
        }
    }

    COUNT(UDPECHO_XDP_JUDGED_BYTES, size);
    __u32 reason = guard(cfg, parsed->source, ipv4, swap16(udp->source), ctx, udp_offset + 8, size, t2, tally, received_check);
    if (reason == UDPECHO_XDP_GUARD_PASS) return PASS(UDPECHO_XDP_PASS_OTHER);
    if (reason) return DROP(reason);

    if (stamp && size < sizeof(struct stamp_reply)) {
        // A short test packet: the datagram grown to the base packet's 44 bytes, zeros at its end (as the socket
        // reflector zero-fills its slot), with the lengths and checksums that follow. The frame may have room past
        // the datagram already (Ethernet padding), which is overwritten; else its tail grows.
        __u32 grow = sizeof(struct stamp_reply) - size;
        __u32 datagram_end = udp_offset + length;
        __u32 frame = (__u32)((long)ctx->data_end - (long)ctx->data);
        if (grow < 1 || grow > 30 || frame < datagram_end || datagram_end > 128 + MAX_UDP_LENGTH) return XDP_PASS;
        // A frame of several buffers would grow its last one, not after the datagram: the sockets answer it.
        if (bpf_xdp_get_buff_len(ctx) != frame) return PASS(UDPECHO_XDP_PASS_STAMP);
        if (frame - datagram_end < grow && bpf_xdp_adjust_tail(ctx, (int)(grow - (frame - datagram_end))) != 0)
            return PASS(UDPECHO_XDP_PASS_STAMP);
        // Zeros in pieces of 16, 8, 4, 2 and 1 bytes: each store a constant size, as the verifier wants.
        __u8 zeros[16] = {};
        __u32 at = datagram_end;
#define ZEROS(n)                                                                                      \
    if (grow & n) {                                                                                   \
        if (bpf_xdp_store_bytes(ctx, at, zeros, n) != 0) return PASS(UDPECHO_XDP_PASS_STAMP);       \
        at += n;                                                                                      \
    }
        ZEROS(16) ZEROS(8) ZEROS(4) ZEROS(2) ZEROS(1)
#undef ZEROS
        data = (void *)(long)ctx->data;
        end = (void *)(long)ctx->data_end;
        udp = data + udp_offset;
        if ((void *)(udp + 1) > end) return XDP_PASS;
        __u16 old_length = udp->len, new_length = swap16((__u16)(length + grow));
        udp->len = new_length;
        if (udp->check != 0) {
            // The length is in the pseudo-header and in the UDP header: it counts twice (RFC 1624 each time).
            __u64 sum = (__u16)~udp->check + 2 * ((__u32)(__u16)~old_length + new_length);
            __u16 check = ~fold(sum);
            udp->check = check == 0 ? 0xffff : check;
        }
        if (ipv4) {
            struct iphdr *ip4 = data + l3;
            if ((void *)(ip4 + 1) > end) return XDP_PASS;
            __u16 old_total = ip4->tot_len, new_total = swap16((__u16)(swap16(old_total) + grow));
            ip4->tot_len = new_total;
            ip4->check = ~fold((__u16)~ip4->check + (__u32)(__u16)~old_total + new_total);
        } else {
            struct ipv6hdr *ip6 = data + l3;
            if ((void *)(ip6 + 1) > end) return XDP_PASS;
            ip6->payload_len = swap16((__u16)(swap16(ip6->payload_len) + grow));
        }
        length += grow;
        size = sizeof(struct stamp_reply);
    }

    __u64 tlv_delta = 0;
    if (stamp) {
        struct stamp_reply *packet = (void *)(udp + 1);
        if ((void *)(packet + 1) > end) return XDP_PASS;
        // A reply of this reflector's come back (another reflector answered it): its copy of the sender's timestamp
        // is a T3 this clock wrote within a minute. The socket path's loop rule (StampReflector.isOwnReply).
        __u64 echoed = __builtin_bswap64(packet->sender_timestamp);
        if (echoed != 0) {
            __s64 now = (__s64)t2 + cfg->realtime_offset;
            __s64 age = now - decode_time(cfg, echoed);
            if (age > -STAMP_LOOP_WINDOW && age < STAMP_LOOP_WINDOW) return DROP(UDPECHO_XDP_DROP_LOOP);
        }
        // The TLVs, through the helpers; the packet's pointers are taken again after.
        if (size > sizeof(struct stamp_reply)) {
            tlv_delta = reflect_tlvs(ctx, tlv_start, tlv_bounds, tlv_info | TLV_WRITE, &parsed->location) & 0xffffffff;
            __u32 location = parsed->location;
            if (location)
                tlv_delta += fill_location(ctx, location & 0xffff, location >> 16, tlv_bounds, tlv_info | TLV_WRITE) &
                             0xffffffff;
        }
    }

    data = (void *)(long)ctx->data;
    end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    udp = data + udp_offset;
    if ((void *)(eth + 1) > end || (void *)(udp + 1) > end) return XDP_PASS;
    if (stamp) {
        struct stamp_reply *packet = (void *)(udp + 1);
        if ((void *)(packet + 1) > end) return XDP_PASS;
        struct stamp_reply reply = {};
        reply.sequence = packet->sequence;
        reply.error_estimate = cfg->error_estimate;
        reply.ssid = packet->ssid;
        reply.receive_timestamp = __builtin_bswap64(encode_time(cfg, t2));
        reply.sender_sequence = packet->sequence;
        reply.sender_timestamp = packet->timestamp;
        reply.sender_error_estimate = packet->error_estimate;
        reply.sender_ttl = parsed->ttl;
        reply.timestamp = __builtin_bswap64(encode_time(cfg, bpf_ktime_get_ns()));
        // The checksum follows the payload's change (RFC 1624), the TLVs' included; IPv4's 0 stays 0 (no checksum).
        if (udp->check != 0) {
            __u64 sum = (__u16)~udp->check + swap16(fold(tlv_delta));
            __u16 *before = (__u16 *)packet, *after = (__u16 *)&reply;
#pragma unroll
            for (int i = 0; i < (int)(sizeof(reply) / 2); i++) sum += (__u16)~before[i] + after[i];
            __u16 check = ~fold(sum);
            udp->check = check == 0 ? 0xffff : check;
        }
        __builtin_memcpy(packet, &reply, sizeof(reply));
    }

    // The answer: addresses and ports swapped (the UDP checksum's sum does not change), a fresh TTL.
    __u16 port = udp->source;
    udp->source = udp->dest;
    udp->dest = port;
    if (ipv4) {
        struct iphdr *ip4 = data + l3;
        if ((void *)(ip4 + 1) > end) return XDP_DROP;
        __u32 a = ip4->saddr;
        ip4->saddr = ip4->daddr;
        ip4->daddr = a;
        // The header's checksum follows its two changed words (RFC 1624); the swap does not change its sum. The
        // words' new values are made from the old ones (bytes in memory order, little-endian loads: the TOS and the
        // TTL are the high byte of word 0 and the low byte of word 4), not read back after the stores.
        const __u16 *header = (const __u16 *)ip4;
        __u16 word0 = header[0], word4 = header[4];
        __u16 new0 = (cfg->flags & UDPECHO_XDP_KEEP_TOS) ? word0 : (word0 & 0x00ff);
        __u16 new4 = (word4 & 0xff00) | 64;
        __u64 sum = (__u16)~ip4->check + (__u16)~word0 + new0 + (__u16)~word4 + new4;
        ip4->ttl = 64;
        if (!(cfg->flags & UDPECHO_XDP_KEEP_TOS)) ip4->tos = 0;
        ip4->check = ~fold(sum);
    } else {
        struct ipv6hdr *ip6 = data + l3;
        if ((void *)(ip6 + 1) > end) return XDP_DROP;
        struct in6_addr a = ip6->saddr;
        ip6->saddr = ip6->daddr;
        ip6->daddr = a;
        ip6->hop_limit = 64;
        if (!(cfg->flags & UDPECHO_XDP_KEEP_TOS)) {
            ip6->priority = 0;
            ip6->flow_lbl[0] &= 0x0f;
        }
    }
    unsigned char mac[ETH_ALEN];
    __builtin_memcpy(mac, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
    if (stamp)
        COUNT(UDPECHO_XDP_REFLECTED, 1);
    else
        COUNT(UDPECHO_XDP_ECHOED, 1);
    COUNT(UDPECHO_XDP_ECHOED_BYTES, size);
    return XDP_TX;
}

char _license[] SEC("license") = "GPL";
