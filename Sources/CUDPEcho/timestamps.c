#define _GNU_SOURCE
#include "CUDPEcho.h"

#include <errno.h>
#include <ifaddrs.h>
#include <linux/errqueue.h>
#include <linux/ethtool.h>
#include <linux/net_tstamp.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

// Linux 6.13: the ID of a send's transmit timestamp given with the send (include/uapi/asm-generic/socket.h).
#ifndef SCM_TS_OPT_ID
#define SCM_TS_OPT_ID 81
#endif

// Receive timestamps for every datagram; transmit timestamps only for the sends that ask (a control message per
// send, see cudpecho_batch_request_timestamp): each costs the kernel a queued error message and a wake-up.
static const int software_flags = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID
                                  | SOF_TIMESTAMPING_OPT_TSONLY;
static const int hardware_flags = SOF_TIMESTAMPING_RX_HARDWARE | SOF_TIMESTAMPING_RAW_HARDWARE
                                  | SOF_TIMESTAMPING_OPT_ID | SOF_TIMESTAMPING_OPT_TSONLY;

int cudpecho_enable_timestamps(int fd, int family, int hardware) {
    int on = 1;
    // Errors (ICMP) and transmit timestamps both come back on the error queue.
    if (family == AF_INET6) {
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &on, sizeof(on)) != 0) {
            return -errno;
        }
    } else if (setsockopt(fd, IPPROTO_IP, IP_RECVERR, &on, sizeof(on)) != 0) {
        return -errno;
    }
    if (hardware < 0) {
        return 0;  // only the error queue, for ICMP errors: user-space clocks
    }
    int flags = hardware ? hardware_flags : software_flags;
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof(flags)) == 0 ? 0 : -errno;
}

int cudpecho_timestamp_ids_supported(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return 0;
    }
    struct sockaddr_in self = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof(self);
    int supported = 0;
    // A socket that sends one byte to itself over loopback, asking for a timestamp with an ID of its choosing.
    if (bind(fd, (struct sockaddr *)&self, sizeof(self)) == 0
        && getsockname(fd, (struct sockaddr *)&self, &length) == 0
        && connect(fd, (struct sockaddr *)&self, sizeof(self)) == 0
        && cudpecho_enable_timestamps(fd, AF_INET, 0) == 0) {
        union {
            char buffer[CMSG_SPACE(sizeof(uint32_t))];
            struct cmsghdr align;
        } control;
        memset(&control, 0, sizeof(control));
        char byte = 0;
        struct iovec iov = {.iov_base = &byte, .iov_len = 1};
        struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer,
                                 .msg_controllen = sizeof(control.buffer)};
        struct cmsghdr *c = CMSG_FIRSTHDR(&message);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_TS_OPT_ID;
        c->cmsg_len = CMSG_LEN(sizeof(uint32_t));
        uint32_t id = 1;
        memcpy(CMSG_DATA(c), &id, sizeof(id));
        supported = sendmsg(fd, &message, MSG_DONTWAIT) == 1;
    }
    close(fd);
    return supported;
}

int cudpecho_hardware_timestamping(const struct sockaddr *target, socklen_t length, char *interface,
                                   size_t interface_size) {
    interface[0] = 0;
    int fd = socket(target->sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    // The interface the route to the target leaves by: the one that holds the local address a connected socket gets.
    struct sockaddr_storage local;
    socklen_t local_length = sizeof(local);
    if (connect(fd, target, length) != 0 || getsockname(fd, (struct sockaddr *)&local, &local_length) != 0) {
        int code = errno;
        close(fd);
        return -code;
    }
    struct ifaddrs *list = NULL;
    if (getifaddrs(&list) == 0) {
        for (struct ifaddrs *entry = list; entry != NULL; entry = entry->ifa_next) {
            if (entry->ifa_addr == NULL || entry->ifa_addr->sa_family != local.ss_family) {
                continue;
            }
            int same = local.ss_family == AF_INET
                           ? ((struct sockaddr_in *)entry->ifa_addr)->sin_addr.s_addr
                                 == ((struct sockaddr_in *)&local)->sin_addr.s_addr
                           : memcmp(&((struct sockaddr_in6 *)entry->ifa_addr)->sin6_addr,
                                    &((struct sockaddr_in6 *)&local)->sin6_addr, sizeof(struct in6_addr))
                                 == 0;
            if (same) {
                strncpy(interface, entry->ifa_name, interface_size - 1);
                interface[interface_size - 1] = 0;
                break;
            }
        }
        freeifaddrs(list);
    }
    if (interface[0] == 0) {
        close(fd);
        return -ENODEV;
    }
    struct ethtool_ts_info info = {.cmd = ETHTOOL_GET_TS_INFO};
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    strncpy(request.ifr_name, interface, IFNAMSIZ - 1);
    request.ifr_data = (void *)&info;
    int result = 0;
    if (ioctl(fd, SIOCETHTOOL, &request) != 0) {
        result = -errno;
    } else if ((info.so_timestamping & (SOF_TIMESTAMPING_TX_HARDWARE | SOF_TIMESTAMPING_RX_HARDWARE
                                        | SOF_TIMESTAMPING_RAW_HARDWARE))
               != (SOF_TIMESTAMPING_TX_HARDWARE | SOF_TIMESTAMPING_RX_HARDWARE | SOF_TIMESTAMPING_RAW_HARDWARE)) {
        result = -EOPNOTSUPP;
    } else {
        // Turn the NIC's timestamping on (needs CAP_NET_ADMIN); it may be on already.
        struct hwtstamp_config config = {.tx_type = HWTSTAMP_TX_ON, .rx_filter = HWTSTAMP_FILTER_ALL};
        request.ifr_data = (void *)&config;
        if (ioctl(fd, SIOCSHWTSTAMP, &request) != 0) {
            result = -errno;
        }
    }
    close(fd);
    return result;
}

void cudpecho_set_timer_slack(unsigned long nanoseconds) { (void)prctl(PR_SET_TIMERSLACK, nanoseconds, 0, 0, 0); }

int64_t cudpecho_realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#include <sys/timerfd.h>

int cudpecho_timer_create(void) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int cudpecho_timer_set(int fd, int64_t deadline_ns) {
    struct itimerspec spec = {0};
    if (deadline_ns > 0) {
        spec.it_value.tv_sec = deadline_ns / 1000000000;
        spec.it_value.tv_nsec = deadline_ns % 1000000000;
    }
    uint64_t expirations;
    (void)read(fd, &expirations, sizeof(expirations));  // a past expiry no longer counts
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &spec, NULL) == 0 ? 0 : -errno;
}

#include <sys/timex.h>

void cudpecho_clock_state(int *synchronized, long *error_us, int *tai) {
    struct timex state = {0};
    int status = adjtimex(&state);
    *synchronized = status >= 0 && status != TIME_ERROR && !(state.status & STA_UNSYNC);
    *error_us = state.esterror;
    *tai = state.tai;
}
