/* Userspace delay line in C: the same line as delayline.py, at a fraction of its CPU.
 *
 * Bridges Ethernet frames between two interfaces (AF_PACKET raw sockets), each held back by a fixed
 * delay. Run inside a namespace that owns both interfaces (the kernel here has no netem):
 *
 *     delayline IF_A IF_B DELAY_MS [JITTER_MS] [SEED] [MAX_QUEUED]
 *
 * Every frame that arrives on one interface is sent out of the other DELAY_MS (+ a uniform
 * 0..JITTER_MS drawn from a generator seeded with SEED) milliseconds later. Jitter may reorder frames,
 * as on a real path. At most MAX_QUEUED (default 20000) frames wait; more are dropped and counted, as
 * are frames the other interface refuses to send (e.g. a GSO super-frame over the MTU) and frames
 * too large for it in the first place. Prints "ready" once both sockets are bound, and a final
 * "stats forwarded=N dropped=M" line on SIGTERM (or SIGINT).
 *
 * veth leaves IPv4 UDP/TCP checksums unfinished (checksum offload) and a raw socket sends a frame as
 * is, so every such checksum is recomputed before the frame waits.
 *
 * Cost: receives and sends are batched (recvmmsg/sendmmsg), the wait is ppoll on CLOCK_MONOTONIC with
 * 1 ns timer slack (microsecond precision), memory is preallocated: MAX_QUEUED slots of the larger
 * MTU plus headers, a binary heap of MAX_QUEUED entries ordered by (due time, arrival).
 *
 * Normally started by delayline.py, which compiles this file once (gcc -O2 -Wall -Werror) into a cache
 * keyed by its hash and execs it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/if_packet.h>
#include <math.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

#define DEFAULT_MAX_QUEUED 20000
#define BATCH 64                /* frames per recvmmsg/sendmmsg */
#define RECV_ROUNDS 8           /* batches read from one socket before the due frames are sent again */
#define SOCKBUF (4 << 20)
#define DEFER_MIN_NS 1000000ull /* with at least this delay, arrivals do not wake the line (see main) */
#define MAX_SLEEP_NS 5000000ull /* ... and it reads its sockets at least this often while frames wait */

struct slot {
    uint32_t len;
    uint8_t out;                /* index of the socket the frame leaves by */
};

struct entry {                  /* heap entry: ordered by (due, seq) */
    uint64_t due;
    uint64_t seq;
    uint32_t slot;
};

static volatile sig_atomic_t stop;
static uint64_t forwarded, dropped;

static int fds[2];
static size_t slot_size;
static uint8_t *frames;         /* max_queued * slot_size bytes */
static struct slot *slots;
static uint32_t *free_slots;    /* stack of unused slot indexes */
static uint32_t n_free;
static struct entry *heap;
static uint32_t n_heap;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static void die(const char *what) {
    fprintf(stderr, "delayline: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(const char *msg) {
    fprintf(stderr,
            "delayline: %s\nusage: delayline IF_A IF_B DELAY_MS [JITTER_MS] [SEED] [MAX_QUEUED]\n", msg);
    exit(2);
}

static double parse_ms(const char *s, const char *name) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < 0 || v > 3600e3) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s must be a number of milliseconds in 0..3600000, got '%s'", name, s);
        usage(msg);
    }
    return v;
}

static long long parse_int(const char *s, const char *name, long long lo, long long hi) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s must be an integer in %lld..%lld, got '%s'", name, lo, hi, s);
        usage(msg);
    }
    return v;
}

static uint64_t ns_of(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void) {
    return ns_of(CLOCK_MONOTONIC);
}

/* splitmix64: a small seeded generator; the same SEED gives the same jitter sequence */
static uint64_t rng_state;
static double uniform01(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

static int open_interface(const char *name, unsigned *mtu) {
    unsigned idx = if_nametoindex(name);
    if (!idx) {
        fprintf(stderr, "delayline: no interface '%s': %s\n", name, strerror(errno));
        exit(1);
    }
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (fd < 0)
        die("socket(AF_PACKET)");
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)idx};
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0)
        die("bind");
    struct packet_mreq mreq = {.mr_ifindex = (int)idx, .mr_type = PACKET_MR_PROMISC};
    if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq, sizeof mreq) < 0)
        die("PACKET_ADD_MEMBERSHIP");
    int one = 1, size = SOCKBUF;
    /* our own transmissions are never wanted (PACKET_OUTGOING is also checked, for old kernels) */
    (void)setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    /* each frame's arrival time, stamped by the kernel when it entered the interface */
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) < 0)
        die("SO_TIMESTAMPNS");
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", name);
    if (ioctl(fd, SIOCGIFMTU, &ifr) < 0)
        die("SIOCGIFMTU");
    *mtu = (unsigned)ifr.ifr_mtu;
    return fd;
}

/* One's complement sum of n bytes in native byte order (RFC 1071: the sum is byte-order independent
 * when the result is stored the same way), eight bytes at a time. */
static uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t n) {
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        sum += (w & 0xFFFFFFFFu) + (w >> 32);
    }
    for (; n >= 2; p += 2, n -= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        sum += h;
    }
    if (n) {
        uint8_t last[2] = {p[0], 0};
        uint16_t h;
        memcpy(&h, last, 2);
        sum += h;
    }
    return sum;
}

/* Recompute an IPv4 UDP/TCP checksum, exactly as delayline.py's l4_checksum_fixed. */
static void fix_l4_checksum(uint8_t *f, size_t len) {
    if (len < 34 || f[12] != 0x08 || f[13] != 0x00)
        return;
    size_t ihl = (size_t)(f[14] & 0x0F) * 4;
    uint8_t proto = f[23];
    size_t total = (size_t)f[16] << 8 | f[17];
    if ((proto != 6 && proto != 17) || ((f[20] << 8 | f[21]) & 0x3FFF) || ihl < 20)
        return;  /* not UDP/TCP, a fragment, or a broken header */
    size_t start = 14 + ihl, end = 14 + total;
    size_t off = start + (proto == 17 ? 6 : 16);
    if (end > len || off + 2 > end)
        return;
    if (proto == 17 && f[off] == 0 && f[off + 1] == 0)  /* UDP without checksum */
        return;
    f[off] = f[off + 1] = 0;
    size_t l4_len = end - start;
    uint8_t pseudo[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, proto, (uint8_t)(l4_len >> 8), (uint8_t)l4_len};
    memcpy(pseudo, f + 26, 8);  /* source and destination addresses */
    uint64_t sum = csum_add(csum_add(0, pseudo, sizeof pseudo), f + start, l4_len);
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    uint16_t csum = (uint16_t)~sum;
    if (csum == 0 && proto == 17)
        csum = 0xFFFF;
    memcpy(f + off, &csum, 2);
}

static int before(const struct entry *a, const struct entry *b) {
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_push(struct entry e) {
    uint32_t i = n_heap++;
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!before(&e, &heap[parent]))
            break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = e;
}

static struct entry heap_pop(void) {
    struct entry top = heap[0], last = heap[--n_heap];
    uint32_t i = 0;
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= n_heap)
            break;
        if (child + 1 < n_heap && before(&heap[child + 1], &heap[child]))
            child++;
        if (!before(&heap[child], &last))
            break;
        heap[i] = heap[child];
        i = child;
    }
    if (n_heap)
        heap[i] = last;
    return top;
}

/* outgoing batches, one per socket */
static struct mmsghdr out_msgs[2][BATCH];
static struct iovec out_iov[2][BATCH];
static uint32_t out_slot[2][BATCH];
static int out_n[2];

static void flush(int side) {
    int n = out_n[side], i = 0;
    while (i < n) {
        int r = sendmmsg(fds[side], &out_msgs[side][i], (unsigned)(n - i), MSG_DONTWAIT);
        if (r > 0) {
            forwarded += (uint64_t)r;
            i += r;
        } else {  /* this frame failed (too big, buffer full): lost, like on a wire */
            dropped++;
            i++;
        }
    }
    for (i = 0; i < n; i++)
        free_slots[n_free++] = out_slot[side][i];
    out_n[side] = 0;
}

static void send_due(uint64_t now) {
    while (n_heap && heap[0].due <= now) {
        struct entry e = heap_pop();
        int side = slots[e.slot].out, k = out_n[side]++;
        out_iov[side][k].iov_base = frames + (size_t)e.slot * slot_size;
        out_iov[side][k].iov_len = slots[e.slot].len;
        memset(&out_msgs[side][k], 0, sizeof out_msgs[side][k]);
        out_msgs[side][k].msg_hdr.msg_iov = &out_iov[side][k];
        out_msgs[side][k].msg_hdr.msg_iovlen = 1;
        out_slot[side][k] = e.slot;
        if (out_n[side] == BATCH)
            flush(side);
    }
    for (int side = 0; side < 2; side++)
        if (out_n[side])
            flush(side);
}

/* incoming batch buffers */
static struct mmsghdr in_msgs[BATCH];
static struct iovec in_iov[BATCH];
static struct sockaddr_ll in_addr[BATCH];
static uint8_t *in_buf;
static union {
    char buf[CMSG_SPACE(sizeof(struct timespec))];
    struct cmsghdr align;
} in_control[BATCH];

/* When frame k arrived, on CLOCK_MONOTONIC: its kernel timestamp (CLOCK_REALTIME) moved over by the
 * clocks' offset now; `now` if it has none or it is implausible (a clock step). */
static uint64_t arrival_ns(int k, uint64_t now, int64_t real_minus_mono) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&in_msgs[k].msg_hdr); c; c = CMSG_NXTHDR(&in_msgs[k].msg_hdr, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof ts);
            int64_t t = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - real_minus_mono;
            return t <= (int64_t)now && t > (int64_t)now - 1000000000 ? (uint64_t)t : now;
        }
    }
    return now;
}

/* Read what waits on socket `side`; returns 1 if the socket may hold more. */
static int receive(int side, double delay_ms, double jitter_ms, uint64_t *seq) {
    uint32_t taken[BATCH];
    for (int round = 0; round < RECV_ROUNDS; round++) {
        /* frames land straight in free slots; those beyond the free ones in scratch space, dropped */
        int n_taken = n_free < BATCH ? (int)n_free : BATCH;
        for (int k = 0; k < n_taken; k++)
            taken[k] = free_slots[--n_free];
        for (int k = 0; k < BATCH; k++) {
            in_iov[k].iov_base = k < n_taken ? frames + (size_t)taken[k] * slot_size : in_buf + (size_t)k * slot_size;
            in_iov[k].iov_len = slot_size;
            memset(&in_msgs[k].msg_hdr, 0, sizeof in_msgs[k].msg_hdr);
            in_msgs[k].msg_hdr.msg_iov = &in_iov[k];
            in_msgs[k].msg_hdr.msg_iovlen = 1;
            in_msgs[k].msg_hdr.msg_name = &in_addr[k];
            in_msgs[k].msg_hdr.msg_namelen = sizeof in_addr[k];
            in_msgs[k].msg_hdr.msg_control = &in_control[k];
            in_msgs[k].msg_hdr.msg_controllen = sizeof in_control[k];
        }
        int n = recvmmsg(fds[side], in_msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                die("recvmmsg");
            n = 0;
        }
        uint64_t now = now_ns();
        int64_t real_minus_mono = (int64_t)(ns_of(CLOCK_REALTIME) - now);
        for (int k = 0; k < n; k++) {
            if (in_addr[k].sll_pkttype == PACKET_OUTGOING)  /* our own transmissions, seen again */
                continue;
            if ((in_msgs[k].msg_hdr.msg_flags & MSG_TRUNC) || k >= n_taken) {
                dropped++;  /* larger than the MTU (could not be sent), or the queue is full */
                continue;
            }
            uint32_t s = taken[k];
            taken[k] = UINT32_MAX;  /* in use */
            fix_l4_checksum(frames + (size_t)s * slot_size, in_msgs[k].msg_len);
            slots[s].len = in_msgs[k].msg_len;
            slots[s].out = (uint8_t)(1 - side);
            double ms = delay_ms + (jitter_ms > 0 ? uniform01() * jitter_ms : 0.0);
            uint64_t due = arrival_ns(k, now, real_minus_mono) + (uint64_t)(ms * 1e6 + 0.5);
            heap_push((struct entry){.due = due, .seq = ++*seq, .slot = s});
        }
        for (int k = n_taken - 1; k >= 0; k--)  /* slots no frame took go back */
            if (taken[k] != UINT32_MAX)
                free_slots[n_free++] = taken[k];
        if (n < BATCH)
            return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 7)
        usage("expected 3 to 6 arguments");
    double delay_ms = parse_ms(argv[3], "DELAY_MS");
    double jitter_ms = argc > 4 ? parse_ms(argv[4], "JITTER_MS") : 0.0;
    rng_state = argc > 5 ? (uint64_t)parse_int(argv[5], "SEED", INT64_MIN, INT64_MAX) : 0;
    uint32_t max_queued = argc > 6 ? (uint32_t)parse_int(argv[6], "MAX_QUEUED", 1, 1000000) : DEFAULT_MAX_QUEUED;

    unsigned mtu_a, mtu_b;
    fds[0] = open_interface(argv[1], &mtu_a);
    fds[1] = open_interface(argv[2], &mtu_b);
    /* the largest frame either side can send: MTU + Ethernet header + one VLAN tag */
    slot_size = (((mtu_a > mtu_b ? mtu_a : mtu_b) + 18 + 63) / 64) * 64;
    frames = malloc((size_t)max_queued * slot_size);
    in_buf = malloc((size_t)BATCH * slot_size);
    slots = calloc(max_queued, sizeof *slots);
    free_slots = malloc((size_t)max_queued * sizeof *free_slots);
    heap = malloc((size_t)max_queued * sizeof *heap);
    if (!frames || !in_buf || !slots || !free_slots || !heap)
        die("malloc");
    for (uint32_t i = 0; i < max_queued; i++)
        free_slots[n_free++] = max_queued - 1 - i;

    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);  /* wake on time, not up to 50 us late (the default) */
    sigset_t block, wait_mask;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &wait_mask);  /* delivered only inside ppoll: no lost wakeup */
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    printf("ready\n");
    fflush(stdout);
    /* Frames are due by their kernel arrival time, so they need not be read the moment they arrive:
     * while frames wait (and the delay is at least DEFER_MIN_NS), the line sleeps until the next one
     * is due, or at most MAX_SLEEP_NS and never longer than the delay, then reads whatever arrived
     * meanwhile. A stream costs one wakeup per departure burst instead of one more per arrival. */
    uint64_t delay_ns = (uint64_t)(delay_ms * 1e6 + 0.5);
    int defer = delay_ns >= DEFER_MIN_NS;
    uint64_t max_sleep = delay_ns < MAX_SLEEP_NS ? delay_ns : MAX_SLEEP_NS;
    uint64_t seq = 0;
    int more[2] = {0, 0};
    struct pollfd pfd[2] = {{.fd = fds[0]}, {.fd = fds[1]}};
    while (!stop) {
        send_due(now_ns());
        uint64_t now = now_ns();  /* after the sends: the wait below must not overshoot by their time */
        int on_arrival = !defer || n_heap == 0;  /* wake when a frame arrives (else: read on each wakeup) */
        struct timespec ts = {0, 0}, *tsp = &ts;
        if (more[0] || more[1]) {
            /* a socket still has frames: only look, do not wait */
        } else if (n_heap) {
            uint64_t wait = heap[0].due > now ? heap[0].due - now : 0;
            if (defer && wait > max_sleep)
                wait = max_sleep;
            ts.tv_sec = (time_t)(wait / 1000000000u);
            ts.tv_nsec = (long)(wait % 1000000000u);
        } else {
            tsp = NULL;
        }
        pfd[0].events = pfd[1].events = on_arrival ? POLLIN : 0;
        int r = ppoll(pfd, 2, tsp, &wait_mask);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("ppoll");
        }
        for (int side = 0; side < 2; side++)
            more[side] = (more[side] || !on_arrival || (pfd[side].revents & POLLIN))
                             ? receive(side, delay_ms, jitter_ms, &seq)
                             : 0;
    }
    printf("stats forwarded=%llu dropped=%llu\n", (unsigned long long)forwarded, (unsigned long long)dropped);
    fflush(stdout);
    return 0;
}
