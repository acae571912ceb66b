// The bpf(2) calls the XDP path needs, without libbpf: make a map, load a program, attach it to an interface with a
// BPF link (the program goes away when the last descriptor of the link closes, so with the process, a crash
// included), and read or write a map's entries. Each returns a descriptor or 0, or -errno.
#include "CUDPEcho.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int bpf_call(int command, union bpf_attr *attr) {
    long result = syscall(__NR_bpf, command, attr, sizeof(*attr));
    return result < 0 ? -errno : (int)result;
}

int cudpecho_bpf_map_create(uint32_t type, uint32_t key_size, uint32_t value_size, uint32_t entries, uint32_t flags,
                            const char *name) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_type = type;
    attr.key_size = key_size;
    attr.value_size = value_size;
    attr.max_entries = entries;
    attr.map_flags = flags;
    if (name) strncpy(attr.map_name, name, sizeof(attr.map_name) - 1);
    return bpf_call(BPF_MAP_CREATE, &attr);
}

int cudpecho_bpf_load_xdp(const void *instructions, uint32_t count, const char *name, char *log, uint32_t log_size) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_XDP;
    attr.insns = (uint64_t)(uintptr_t)instructions;
    attr.insn_cnt = count;
    attr.license = (uint64_t)(uintptr_t) "GPL";
    attr.expected_attach_type = BPF_XDP;
    if (name) strncpy(attr.prog_name, name, sizeof(attr.prog_name) - 1);
    // Multi-buffer aware (BPF_F_XDP_HAS_FRAGS): a driver may then attach it where the MTU is past a page (jumbo
    // frames), and gives it the first buffer of a frame that does not fit one. The program reads only the first
    // buffer and passes up a datagram that goes past it. A kernel older than 5.18 does not know the flag (EINVAL):
    // once more without it, and the attach is refused there as before for an MTU past a page.
    attr.prog_flags = BPF_F_XDP_HAS_FRAGS;
    int fd = bpf_call(BPF_PROG_LOAD, &attr);
    if (fd == -EINVAL) {
        attr.prog_flags = 0;
        fd = bpf_call(BPF_PROG_LOAD, &attr);
    }
    if (fd >= 0 || !log || log_size < 2) return fd;
    // Refused: once more with the verifier's log, for the error message.
    int first = fd;
    log[0] = 0;
    attr.log_buf = (uint64_t)(uintptr_t)log;
    attr.log_size = log_size;
    attr.log_level = 1;
    fd = bpf_call(BPF_PROG_LOAD, &attr);
    if (fd >= 0) return fd;
    log[log_size - 1] = 0;
    return fd == -ENOSPC ? first : fd;
}

int cudpecho_bpf_link_xdp(int program, int ifindex, uint32_t flags) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.link_create.prog_fd = program;
    attr.link_create.target_ifindex = ifindex;
    attr.link_create.attach_type = BPF_XDP;
    attr.link_create.flags = flags;
    return bpf_call(BPF_LINK_CREATE, &attr);
}

int cudpecho_bpf_map_update(int map, const void *key, const void *value, uint64_t flags) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = map;
    attr.key = (uint64_t)(uintptr_t)key;
    attr.value = (uint64_t)(uintptr_t)value;
    attr.flags = flags;
    return bpf_call(BPF_MAP_UPDATE_ELEM, &attr);
}

int cudpecho_bpf_map_lookup(int map, const void *key, void *value) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = map;
    attr.key = (uint64_t)(uintptr_t)key;
    attr.value = (uint64_t)(uintptr_t)value;
    return bpf_call(BPF_MAP_LOOKUP_ELEM, &attr);
}

int cudpecho_bpf_map_delete(int map, const void *key) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = map;
    attr.key = (uint64_t)(uintptr_t)key;
    return bpf_call(BPF_MAP_DELETE_ELEM, &attr);
}

int cudpecho_bpf_map_next_key(int map, const void *key, void *next) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = map;
    attr.key = (uint64_t)(uintptr_t)key;
    attr.next_key = (uint64_t)(uintptr_t)next;
    return bpf_call(BPF_MAP_GET_NEXT_KEY, &attr);
}

int cudpecho_bpf_test_run_xdp(int program, const void *input, uint32_t input_size, void *output, uint32_t *output_size,
                              uint32_t *action) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.test.prog_fd = (uint32_t)program;
    attr.test.data_in = (uint64_t)(uintptr_t)input;
    attr.test.data_size_in = input_size;
    attr.test.data_out = (uint64_t)(uintptr_t)output;
    attr.test.data_size_out = *output_size;
    attr.test.repeat = 1;
    int result = bpf_call(BPF_PROG_TEST_RUN, &attr);
    if (result < 0) return result;
    *output_size = attr.test.data_size_out;
    *action = attr.test.retval;
    return 0;
}

int cudpecho_possible_cpus(void) {
    // "0-3" or "0,2-5": the highest CPU number plus one is what per-CPU maps hold a value for.
    int fd = open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    char text[256];
    ssize_t length = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (length <= 0) return -EIO;
    text[length] = 0;
    int highest = -1, value = 0, digits = 0;
    for (ssize_t i = 0; i <= length; i++) {
        char c = text[i];
        if (c >= '0' && c <= '9') {
            if (value > 100000) return -EIO;
            value = value * 10 + (c - '0');
            digits = 1;
        } else {
            if (digits && value > highest) highest = value;
            value = 0;
            digits = 0;
        }
    }
    return highest < 0 ? -EIO : highest + 1;
}

_Static_assert(CUDPECHO_BPF_PSEUDO_MAP_FD == BPF_PSEUDO_MAP_FD, "BPF_PSEUDO_MAP_FD");
_Static_assert(CUDPECHO_XDP_FLAGS_SKB_MODE == XDP_FLAGS_SKB_MODE, "XDP_FLAGS_SKB_MODE");
_Static_assert(CUDPECHO_XDP_FLAGS_DRV_MODE == XDP_FLAGS_DRV_MODE, "XDP_FLAGS_DRV_MODE");
