// A load for a TWAMP or STAMP reflector from many sessions at once: COUNT UDP sockets bound to 127.0.0.1 ports
// BASE..BASE+COUNT-1, each connected to the reflector, each sending 44-byte unauthenticated test packets (sequence
// number and timestamp; STAMP's base size). Rounds of one packet per socket, RATE packets a second in all, for
// SECONDS; replies are read between rounds (epoll). Prints one JSON object: sent, received, seconds.
//
// usage: twamp-load HOST PORT BASE COUNT SECONDS RATE   (built and run by scripts/twamp-cost.sh)
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: twamp-load HOST PORT BASE COUNT SECONDS RATE\n");
    return 2;
  }
  const char *host = argv[1];
  int port = atoi(argv[2]), base = atoi(argv[3]), count = atoi(argv[4]);
  double seconds = atof(argv[5]), rate = atof(argv[6]);
  if (count < 1 || count > 60000 || seconds <= 0 || seconds > 600 || rate <= 0) {
    fprintf(stderr, "twamp-load: out of range\n");
    return 2;
  }
  int *fds = calloc((size_t)count, sizeof(int));
  int ep = epoll_create1(0);
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, host, &to.sin_addr);
  for (int i = 0; i < count; i++) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in from = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(base + i))};
    inet_pton(AF_INET, "127.0.0.1", &from.sin_addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
        connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
      fprintf(stderr, "twamp-load: socket %d (port %d): %s\n", i, base + i, strerror(errno));
      return 1;
    }
    struct epoll_event event = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &event);
    fds[i] = fd;
  }
  unsigned char packet[44] = {0}, reply[2048];
  uint64_t sent = 0, received = 0;
  int64_t start = now_ns(), end = start + (int64_t)(seconds * 1e9);
  int64_t round_ns = (int64_t)(1e9 * count / rate), next = start;
  struct epoll_event events[256];
  uint32_t sequence = 0;
  while (now_ns() < end) {
    for (int i = 0; i < count; i++) {
      uint32_t s = htonl(sequence);
      memcpy(packet, &s, 4);
      if (send(fds[i], packet, sizeof packet, 0) == (ssize_t)sizeof packet) sent++;
    }
    sequence++;
    next += round_ns;
    // Read replies until the next round is due.
    for (;;) {
      int64_t left = next - now_ns();
      int n = epoll_wait(ep, events, 256, left > 0 ? (int)(left / 1000000) : 0);
      for (int e = 0; e < n; e++) {
        while (recv(fds[events[e].data.u32], reply, sizeof reply, 0) > 0) received++;
      }
      if (now_ns() >= next || n < 0) break;
      if (n == 0 && next - now_ns() < 1000000) {
        while (now_ns() < next) {}
        break;
      }
    }
  }
  // The last replies.
  int64_t drain = now_ns() + 200000000;
  while (now_ns() < drain) {
    int n = epoll_wait(ep, events, 256, 20);
    for (int e = 0; e < n; e++) {
      while (recv(fds[events[e].data.u32], reply, sizeof reply, 0) > 0) received++;
    }
  }
  printf("{\"sent\": %llu, \"received\": %llu, \"seconds\": %.3f}\n", (unsigned long long)sent,
         (unsigned long long)received, (double)(end - start) / 1e9);
  return 0;
}
