#define _GNU_SOURCE
#include "CUDPEcho.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct cudpecho_ring {
    _Atomic uint32_t head;  // next to read; written by the consumer
    char head_padding[60];
    _Atomic uint32_t tail;  // next to write; written by the producer
    char tail_padding[60];
    uint32_t mask;
    cudpecho_event *slots;
};

cudpecho_ring *cudpecho_ring_create(uint32_t capacity) {
    uint32_t size = 1;
    while (size < capacity && size < (1u << 24)) {
        size <<= 1;
    }
    cudpecho_ring *ring = calloc(1, sizeof(*ring));
    if (ring == NULL) {
        return NULL;
    }
    ring->slots = calloc(size, sizeof(cudpecho_event));
    if (ring->slots == NULL) {
        free(ring);
        return NULL;
    }
    ring->mask = size - 1;
    return ring;
}

void cudpecho_ring_destroy(cudpecho_ring *ring) {
    if (ring != NULL) {
        free(ring->slots);
        free(ring);
    }
}

int cudpecho_ring_push(cudpecho_ring *ring, const cudpecho_event *event) {
    uint32_t tail = atomic_load_explicit(&ring->tail, memory_order_relaxed);
    uint32_t head = atomic_load_explicit(&ring->head, memory_order_acquire);
    if (tail - head > ring->mask) {
        return 0;
    }
    ring->slots[tail & ring->mask] = *event;
    atomic_store_explicit(&ring->tail, tail + 1, memory_order_release);
    return 1;
}

int cudpecho_ring_pop(cudpecho_ring *ring, cudpecho_event *event) {
    uint32_t head = atomic_load_explicit(&ring->head, memory_order_relaxed);
    uint32_t tail = atomic_load_explicit(&ring->tail, memory_order_acquire);
    if (head == tail) {
        return 0;
    }
    *event = ring->slots[head & ring->mask];
    atomic_store_explicit(&ring->head, head + 1, memory_order_release);
    return 1;
}

int cudpecho_ring_is_empty(cudpecho_ring *ring) {
    return atomic_load_explicit(&ring->head, memory_order_relaxed)
           == atomic_load_explicit(&ring->tail, memory_order_seq_cst);
}

void cudpecho_event_set_peer(cudpecho_event *event, const struct sockaddr *peer, socklen_t length) {
    if (length > sizeof(event->peer)) {
        length = sizeof(event->peer);
    }
    memcpy(&event->peer, peer, length);
    event->peer_length = length;
}

struct cudpecho_notifier {
    _Atomic uint32_t sequence;
    _Atomic uint32_t sleeping;
};

cudpecho_notifier *cudpecho_notifier_create(void) { return calloc(1, sizeof(cudpecho_notifier)); }

void cudpecho_notifier_destroy(cudpecho_notifier *notifier) { free(notifier); }

// The producer publishes (a ring's tail) and then reads `sleeping`; the consumer sets `sleeping` and then reads the
// rings. With a full fence on both sides, at least one of them sees the other's write: either the consumer finds the
// news and does not sleep, or the producer sees it asleep and wakes it (and a wake that comes before the wait makes
// the wait return at once, since the sequence has moved).
void cudpecho_notifier_wake(cudpecho_notifier *notifier) {
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&notifier->sleeping, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&notifier->sequence, 1, memory_order_seq_cst);
        syscall(SYS_futex, &notifier->sequence, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    }
}

uint32_t cudpecho_notifier_prepare(cudpecho_notifier *notifier) {
    uint32_t sequence = atomic_load_explicit(&notifier->sequence, memory_order_seq_cst);
    atomic_store_explicit(&notifier->sleeping, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    return sequence;
}

void cudpecho_notifier_wait(cudpecho_notifier *notifier, uint32_t sequence, int timeout_ms) {
    struct timespec timeout = {.tv_sec = timeout_ms / 1000, .tv_nsec = (long)(timeout_ms % 1000) * 1000000};
    syscall(SYS_futex, &notifier->sequence, FUTEX_WAIT_PRIVATE, sequence, timeout_ms < 0 ? NULL : &timeout, NULL, 0);
    atomic_store_explicit(&notifier->sleeping, 0, memory_order_relaxed);
}

void cudpecho_notifier_cancel(cudpecho_notifier *notifier) {
    atomic_store_explicit(&notifier->sleeping, 0, memory_order_relaxed);
}
