/*
 * smolpack guest agent — the run stage inside the VM.
 *
 * Implements formats/agent-protocol.md (protocol version 2, speaks 1 too): PID 1 of the guest
 * under QEMU (init=/smolpack/agent), or started by libkrun's init, or `agent --port-fd N` for
 * tests on the host (section 8). One RUN at a time, single-threaded poll loop over: the port,
 * a signalfd for SIGCHLD, the running program's stdio (pipes, or a pty master in tty mode),
 * and the channels of section 5.7 (TCP connections to guest ports, the ssh-agent socket).
 *
 * Build: see guest/Makefile and guest/README.md (static, musl-gcc preferred). This file is
 * package data (pyproject.toml): `smolpack create` compiles it via smolpack/agent/binary.py.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define AGENT_VERSION "smolpack-agent 0.1.0"
#define PROTOCOL_VERSION 2u /* newest spoken; HELLO with 1 is answered with 1 (spec 5.1) */
#define HDR_LEN 12u
#define DATA_MAX 65536u             /* max data per STDOUT/STDERR frame (spec section 2) */
#define OUT_HIGH (256u * 1024u)     /* stop reading program output above this backlog */
#define IN_HIGH (4u * 1024u * 1024u) /* stop reading the channel above this stdin backlog */
#define GRACE_MS 500                /* wait for grandchildren holding stdout/stderr */
#define PORT_NAME "smolpack.agent"
#define CHAN_MAX 64                  /* open channels at once (section 5.7) */
#define CHAN_WINDOW (1024u * 1024u)   /* uncredited bytes per channel and direction (5.7) */
#define CREDIT_EVERY (64u * 1024u)
#define AGENT_CHAN_BIT 0x80000000u   /* ids the agent opens */
#define SERVICE_SSH_AGENT 1u
#define SSH_SOCK_NAME "ssh-agent.sock"
#define FUSE_BUF (256u * 1024u) /* /dev/fuse reads need >= max_write (128 KiB) + headers */
#define MOUNT_RO 1u
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* RNDADDENTROPY from <linux/random.h>, which musl does not ship: _IOW('R', 0x03, int[2]). */
#define SP_RNDADDENTROPY _IOW('R', 0x03, int[2])

enum {
    T_HELLO = 0x01, T_RUN = 0x02, T_STDIN = 0x03, T_SIGNAL = 0x04, T_RESIZE = 0x05,
    T_PREPARE = 0x06, T_CHAN_OPEN = 0x07, T_CHAN_DATA = 0x08, T_CHAN_CLOSE = 0x09,
    T_CHAN_CREDIT = 0x0A, T_MOUNT = 0x0B, TO_HOST = 0x80, T_HELLO_ACK = 0x81, T_STDOUT = 0x82, T_STDERR = 0x83, T_EXIT = 0x84,
    T_ERROR = 0x85, T_READY = 0x86,
};
enum { RUN_TTY = 1u << 0, RUN_POWER_OFF = 1u << 1, RUN_SSH_AGENT = 1u << 2 };
enum state { WAIT_HELLO, IDLE, RUNNING };

struct buf {
    uint8_t *p;
    size_t off, len, cap; /* live bytes are p[off..len) */
};

struct run {
    pid_t pid;
    int tty, power_off;
    int in_fd;        /* pipe write end or pty master (not owned in tty mode); -1 = closed */
    int out_fd;       /* pipe read end or pty master; -1 = at EOF */
    int err_fd;       /* pipe read end; -1 = at EOF (always in tty mode) */
    int in_eof;       /* host sent STDIN EOF: close stdin once inq is drained */
    struct buf inq;   /* STDIN bytes not yet written to the program */
    int reaped, status;
    long long reaped_at_ms;
};

static int port_fd = -1;
static int test_mode;   /* --port-fd: no mounts, clock, RNG, power off (spec section 8) */
static int sig_fd = -1;
static enum state state = WAIT_HELLO;
static struct buf inbuf, outbuf;
static struct run run;
static long long port_backoff_until_ms;

/* One channel (section 5.7): a TCP connection to a guest port or an ssh-agent client. */
struct chan {
    uint32_t id;      /* 0 = free slot */
    int fd;
    int connecting;   /* non-blocking connect in progress */
    uint32_t credit;  /* bytes we may still send to the host */
    uint32_t written; /* bytes written to fd, not yet credited to the host */
    int read_eof, peer_eof, closing;
    struct buf q;     /* from the host, to write to fd */
    char *mnt;        /* a FUSE channel (MOUNT): fd is /dev/fuse, mounted here */
};
static struct chan chans[CHAN_MAX];
static uint32_t next_agent_chan = 1;
static int ssh_fd = -1;              /* the ssh-agent listener of the current run */
static char ssh_dir[256] = "/run/smolpack";

static void logmsg(const char *fmt, const char *a, const char *b) {
    dprintf(2, "smolpack-agent: ");
    dprintf(2, fmt, a, b);
    dprintf(2, "\n");
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- little-endian helpers and CRC-32 (zlib polynomial, spec section 2) ---- */

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t crc_table[256];
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}
static uint32_t crc_update(uint32_t c, const uint8_t *p, size_t n) {
    while (n--) c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c;
}

/* ---- byte buffers ---- */

static void buf_append(struct buf *b, const void *data, size_t n) {
    if (b->off && b->len + n > b->cap) { /* compact before growing */
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) { logmsg("out of memory%s%s", "", ""); abort(); }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}
static size_t buf_used(const struct buf *b) { return b->len - b->off; }
static void buf_consume(struct buf *b, size_t n) {
    b->off += n;
    if (b->off == b->len) b->off = b->len = 0;
}
static void buf_clear(struct buf *b) { b->off = b->len = 0; }

/* ---- frames ---- */

static long type_max(uint8_t t) { /* per-type body maximum (spec section 4); -1 = unknown */
    switch (t) {
    case T_HELLO: return 20;
    case T_RUN: return 1L << 20;
    case T_STDIN: case T_STDOUT: case T_STDERR: return DATA_MAX;
    case T_SIGNAL: case T_RESIZE: case T_EXIT: return t == T_EXIT ? 8 : 4;
    case T_PREPARE: case T_READY: return 0;
    case T_CHAN_OPEN: case T_CHAN_OPEN | TO_HOST: case T_CHAN_CREDIT:
    case T_CHAN_CREDIT | TO_HOST: return 8;
    case T_CHAN_DATA: case T_CHAN_DATA | TO_HOST: return DATA_MAX + 4;
    case T_CHAN_CLOSE: case T_CHAN_CLOSE | TO_HOST: return 4;
    case T_MOUNT: return 12 + 4096;
    case T_HELLO_ACK: return 1024;
    case T_ERROR: return 4096;
    default: return -1;
    }
}

/* A frame whose body is `pre` (npre bytes) then `body` (n bytes). */
static void send_frame2(uint8_t type, const void *pre, size_t npre, const void *body, size_t n) {
    uint8_t h[HDR_LEN] = {'S', 'P', type, 0};
    wr32(h + 4, (uint32_t)(npre + n));
    uint32_t c = crc_update(0xFFFFFFFFu, h, 8);
    if (npre) c = crc_update(c, pre, npre);
    c = crc_update(c, body, n) ^ 0xFFFFFFFFu;
    wr32(h + 8, c);
    buf_append(&outbuf, h, HDR_LEN);
    if (npre) buf_append(&outbuf, pre, npre);
    if (n) buf_append(&outbuf, body, n);
}
static void send_frame(uint8_t type, const void *body, size_t n) {
    send_frame2(type, NULL, 0, body, n);
}

static void send_error(const char *msg) {
    uint8_t b[4 + 1024];
    size_t n = strnlen(msg, 1024);
    wr32(b, (uint32_t)n);
    memcpy(b + 4, msg, n);
    send_frame(T_ERROR, b, 4 + n);
}

/* Next valid frame in inbuf, resynchronising on damage (spec section 3). The body pointer
 * stays valid until the next buf_append to inbuf. */
static int next_frame(uint8_t *type, const uint8_t **body, uint32_t *len) {
    for (;;) {
        const uint8_t *p = inbuf.p + inbuf.off;
        size_t n = buf_used(&inbuf), i = 0;
        while (i + 1 < n && !(p[i] == 'S' && p[i + 1] == 'P')) i++;
        if (i + 1 >= n) { /* no magic: keep a trailing 'S' only */
            buf_consume(&inbuf, (n && p[n - 1] == 'S') ? n - 1 : n);
            return 0;
        }
        buf_consume(&inbuf, i);
        p += i;
        n -= i;
        if (n < HDR_LEN) return 0;
        uint32_t blen = rd32(p + 4);
        long mx = type_max(p[2]);
        if (mx < 0 || p[3] != 0 || blen > (uint32_t)mx) { buf_consume(&inbuf, 1); continue; }
        if (n < HDR_LEN + blen) return 0;
        uint32_t c = crc_update(0xFFFFFFFFu, p, 8);
        c = crc_update(c, p + HDR_LEN, blen) ^ 0xFFFFFFFFu;
        if (c != rd32(p + 8)) { buf_consume(&inbuf, 1); continue; }
        *type = p[2];
        *body = p + HDR_LEN;
        *len = blen;
        buf_consume(&inbuf, HDR_LEN + blen);
        return 1;
    }
}

/* --port-fd mode: the host closed its end (read EOF or EPIPE). Stop the program, exit 0. */
static void host_gone(void) {
    if (state == RUNNING && !run.reaped) kill(-run.pid, SIGKILL);
    _exit(0);
}

/* Write queued output to the channel; with block, until it is all written. */
static void flush_out(int block) {
    while (buf_used(&outbuf)) {
        ssize_t w = write(port_fd, outbuf.p + outbuf.off, buf_used(&outbuf));
        if (w > 0) { buf_consume(&outbuf, (size_t)w); continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) {
            if (!block) return;
            struct pollfd pf = {.fd = port_fd, .events = POLLOUT};
            poll(&pf, 1, 100);
            continue;
        }
        if (test_mode) host_gone();
        /* VM modes: the host side is not connected (e.g. between save and restore). */
        buf_clear(&outbuf);
        port_backoff_until_ms = now_ms() + 50;
        return;
    }
}

/* ---- guest setup (PID 1 / libkrun modes only) ---- */

static void mount_one(const char *src, const char *dst, const char *type, const char *data) {
    mkdir(dst, 0755);
    if (mount(src, dst, type, MS_NOSUID, data) != 0 && errno != EBUSY)
        logmsg("mount %s: %s", dst, strerror(errno));
}

/* The kernel opens /dev/console as fds 0-2 for init only if the root fs has it. Hold the
 * closed slots with placeholders so no later open() (the port!) lands on fd 2 and takes the
 * agent's log lines; once devtmpfs is mounted they point at the console or /dev/null. */
static int stdio_placeholders;
static void hold_stdio(void) {
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/", O_RDONLY | O_DIRECTORY) == fd)
            stdio_placeholders |= 1 << fd;
}
static void fix_stdio(void) {
    if (!stdio_placeholders) return;
    int c = open("/dev/console", O_RDWR | O_NOCTTY);
    if (c < 0) c = open("/dev/null", O_RDWR);
    for (int fd = 0; c >= 0 && fd < 3; fd++)
        if (stdio_placeholders & (1 << fd)) dup2(c, fd);
    if (c > 2) close(c);
}

/* Bring up lo (the kernel then adds 127.0.0.1/8): forwarded ports connect to 127.0.0.1. */
static void loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) != 0) logmsg("lo: %s%s", strerror(errno), "");
    else if (!(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) logmsg("lo up: %s%s", strerror(errno), "");
    }
    if (s >= 0) close(s);
}

static void setup_guest(void) {
    hold_stdio();
    mount_one("proc", "/proc", "proc", NULL);
    mount_one("sysfs", "/sys", "sysfs", NULL);
    mount_one("devtmpfs", "/dev", "devtmpfs", "mode=0755");
    mount_one("devpts", "/dev/pts", "devpts", "gid=5,mode=620,ptmxmode=666");
    mount_one("tmpfs", "/dev/shm", "tmpfs", "mode=1777");
    mount_one("tmpfs", "/tmp", "tmpfs", "mode=1777");
    mount_one("tmpfs", "/run", "tmpfs", "mode=0755");
    if (access("/dev/ptmx", F_OK) != 0) symlink("pts/ptmx", "/dev/ptmx");
    fix_stdio();

    char cmdline[4096] = {0}, host[65] = "smolpack";
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
        cmdline[n > 0 ? n : 0] = 0;
        close(fd);
    }
    for (char *tok = strtok(cmdline, " \n"); tok; tok = strtok(NULL, " \n"))
        if (!strncmp(tok, "smolpack.hostname=", 18) && tok[18])
            snprintf(host, sizeof host, "%s", tok + 18);
    if (sethostname(host, strlen(host)) != 0) logmsg("sethostname %s: %s", host, strerror(errno));
    if (chdir("/") != 0) logmsg("chdir /: %s%s", strerror(errno), "");
    loopback_up();
}

/* Open /dev/<vport> whose /sys/class/virtio-ports/<vport>/name is PORT_NAME; -1 if none. */
static int open_port(void) {
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d) return -1;
    int fd = -1;
    for (struct dirent *e; fd < 0 && (e = readdir(d));) {
        char path[512], name[64] = {0};
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        int nf = open(path, O_RDONLY | O_CLOEXEC);
        if (nf < 0) continue;
        ssize_t n = read(nf, name, sizeof name - 1);
        close(nf);
        if (n <= 0) continue;
        name[strcspn(name, "\n")] = 0;
        if (strcmp(name, PORT_NAME)) continue;
        snprintf(path, sizeof path, "/dev/%s", e->d_name);
        fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    }
    closedir(d);
    return fd;
}

static void power_off(void) {
    sync();
    if (test_mode) _exit(0);
    reboot(RB_POWER_OFF);
    logmsg("power off: %s%s", strerror(errno), "");
    if (getpid() != 1) _exit(0);
    for (;;) pause(); /* PID 1 must not exit (kernel panic); the host kills the VM */
}


/* ---- channels (spec section 5.7) ---- */

static struct chan *chan_find(uint32_t id) {
    for (int i = 0; id && i < CHAN_MAX; i++)
        if (chans[i].id == id) return &chans[i];
    return NULL;
}

static struct chan *chan_new(uint32_t id, int fd, int connecting) {
    for (int i = 0; i < CHAN_MAX; i++) {
        struct chan *c = &chans[i];
        if (c->id) continue;
        uint8_t *keep = c->q.p;
        size_t cap = c->q.cap;
        memset(c, 0, sizeof *c);
        c->q.p = keep; /* reuse the slot's buffer */
        c->q.cap = cap;
        c->id = id;
        c->fd = fd;
        c->connecting = connecting;
        c->credit = CHAN_WINDOW;
        return c;
    }
    return NULL;
}

static void send_chan(uint8_t type, uint32_t id, const void *data, size_t n) {
    uint8_t pre[4];
    wr32(pre, id);
    send_frame2(type | TO_HOST, pre, 4, data, n);
}
static void send_chan_u32(uint8_t type, uint32_t id, uint32_t v) {
    uint8_t b[4];
    wr32(b, v);
    send_chan(type, id, b, 4);
}

static void chan_forget(struct chan *c) {
    if (c->mnt) { /* detach: a leftover process inside only sees it vanish */
        umount2(c->mnt, MNT_DETACH);
        free(c->mnt);
        c->mnt = NULL;
    }
    close(c->fd);
    c->id = 0;
    buf_clear(&c->q);
}
static void chan_abort(struct chan *c) {
    send_chan(T_CHAN_CLOSE, c->id, NULL, 0);
    chan_forget(c);
}
static void chan_maybe_done(struct chan *c) {
    if (c->id && c->read_eof && c->peer_eof && !buf_used(&c->q)) chan_abort(c);
}

/* A FUSE channel's queue holds the kernel's replies (fuse_out_header.len first): each one
 * goes to /dev/fuse in exactly one write, as the device demands. */
static void fuse_write(struct chan *c) {
    while (buf_used(&c->q) >= 16) {
        uint32_t len = rd32(c->q.p + c->q.off);
        if (len < 16 || len > CHAN_WINDOW) { chan_abort(c); return; }
        if (buf_used(&c->q) < len) break;
        /* ENOENT: the request was interrupted meanwhile; the reply is just dropped. */
        if (write(c->fd, c->q.p + c->q.off, len) < 0 && errno != ENOENT)
            logmsg("fuse reply: %s%s", strerror(errno), "");
        buf_consume(&c->q, len);
        c->written += len;
    }
    if (c->written) {
        send_chan_u32(T_CHAN_CREDIT, c->id, c->written);
        c->written = 0;
    }
}

static void chan_write(struct chan *c) {
    if (c->mnt) { fuse_write(c); return; }
    if (c->connecting) {
        if (c->closing) chan_forget(c);
        return;
    }
    while (buf_used(&c->q)) {
        ssize_t w = write(c->fd, c->q.p + c->q.off, buf_used(&c->q));
        if (w > 0) { buf_consume(&c->q, (size_t)w); c->written += (uint32_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) break;
        chan_abort(c);
        return;
    }
    if (c->written && (c->written >= CREDIT_EVERY || !buf_used(&c->q))) {
        send_chan_u32(T_CHAN_CREDIT, c->id, c->written);
        c->written = 0;
    }
    if (buf_used(&c->q)) return;
    if (c->closing) { chan_forget(c); return; } /* the host closed: send nothing back */
    if (c->peer_eof) shutdown(c->fd, SHUT_WR);
    chan_maybe_done(c);
}

static void fuse_read(struct chan *c) {
    static uint8_t req[FUSE_BUF];
    ssize_t n = read(c->fd, req, sizeof req); /* exactly one request */
    if (n < 0 && (errno == EAGAIN || errno == EINTR || errno == ENOENT)) return;
    if (n <= 0) { chan_abort(c); return; } /* ENODEV: unmounted */
    for (size_t off = 0; off < (size_t)n; off += DATA_MAX) {
        size_t k = (size_t)n - off < DATA_MAX ? (size_t)n - off : DATA_MAX;
        send_chan(T_CHAN_DATA, c->id, req + off, k);
    }
    c->credit -= (uint32_t)n;
}

static void chan_read(struct chan *c) {
    if (c->mnt) { fuse_read(c); return; }
    uint8_t data[DATA_MAX];
    size_t want = c->credit < DATA_MAX ? c->credit : DATA_MAX;
    ssize_t n = read(c->fd, data, want);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n < 0) { chan_abort(c); return; }
    send_chan(T_CHAN_DATA, c->id, data, (size_t)n); /* n == 0: EOF */
    if (n > 0) { c->credit -= (uint32_t)n; return; }
    c->read_eof = 1;
    chan_maybe_done(c);
}

static void chan_connected(struct chan *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err) { chan_abort(c); return; } /* e.g. ECONNREFUSED: nobody listens there */
    c->connecting = 0;
    chan_write(c);
}

/* CHAN_OPEN from the host: connect to 127.0.0.1:port in the guest. */
static void chan_open_tcp(uint32_t id, uint32_t port) {
    if ((id & AGENT_CHAN_BIT) || chan_find(id) || port == 0 || port > 65535) {
        send_chan(T_CHAN_CLOSE, id, NULL, 0);
        return;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = fd < 0 ? -1 : connect(fd, (struct sockaddr *)&sa, sizeof sa);
    struct chan *c = NULL;
    if (rc == 0 || (rc < 0 && errno == EINPROGRESS)) c = chan_new(id, fd, rc != 0);
    if (!c) {
        if (fd >= 0) close(fd);
        send_chan(T_CHAN_CLOSE, id, NULL, 0);
    }
}

static void chan_frame(uint8_t type, const uint8_t *body, uint32_t len) {
    if (len < 4) return;
    uint32_t id = rd32(body);
    if (type == T_CHAN_OPEN) {
        if (len == 8) chan_open_tcp(id, rd32(body + 4));
        return;
    }
    struct chan *c = chan_find(id);
    if (!c || (c->id & AGENT_CHAN_BIT) != (id & AGENT_CHAN_BIT)) return;
    if (type == T_CHAN_CREDIT) {
        if (len == 8) c->credit += rd32(body + 4);
    } else if (type == T_CHAN_CLOSE) {
        c->closing = 1;
        chan_write(c);
    } else if (len > 4) {
        if (buf_used(&c->q) + (len - 4) > CHAN_WINDOW) { chan_abort(c); return; }
        buf_append(&c->q, body + 4, len - 4);
        chan_write(c);
    } else {
        c->peer_eof = 1;
        chan_write(c);
    }
}

static void mkdir_p(const char *path) {
    char p[4097];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') { *s = 0; mkdir(p, 0755); *s = '/'; }
    mkdir(p, 0755);
}

/* MOUNT (h→a): a host directory at guest_path, as FUSE served by the host on channel id. */
static void chan_mount(const uint8_t *body, uint32_t len) {
    if (len < 12) return;
    uint32_t id = rd32(body), flags = rd32(body + 4), plen = rd32(body + 8);
    char path[4097], msg[4200];
    if (plen != len - 12 || plen == 0 || plen > 4096 || memchr(body + 12, 0, plen) ||
        body[12] != '/' || (flags & ~MOUNT_RO)) {
        send_error("malformed MOUNT");
        return;
    }
    memcpy(path, body + 12, plen);
    path[plen] = 0;
    if ((id & AGENT_CHAN_BIT) || chan_find(id)) { send_chan(T_CHAN_CLOSE, id, NULL, 0); return; }
    mkdir_p(path);
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    char opts[160];
    snprintf(opts, sizeof opts,
             "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,max_read=131072", fd);
    unsigned long mf = MS_NOSUID | MS_NODEV | ((flags & MOUNT_RO) ? MS_RDONLY : 0);
    if (fd < 0 || mount("smolpack", path, "fuse", mf, opts) != 0) {
        snprintf(msg, sizeof msg, "cannot mount a host directory at %s: %s", path,
                 strerror(errno));
        if (fd >= 0) close(fd);
        send_error(msg);
        return;
    }
    struct chan *c = chan_new(id, fd, 0);
    if (!c) {
        umount2(path, MNT_DETACH);
        close(fd);
        send_error("cannot mount a host directory: too many channels");
        return;
    }
    c->mnt = strdup(path);
}

static void chan_unmount_all(void) {
    for (int i = 0; i < CHAN_MAX; i++)
        if (chans[i].id && chans[i].mnt) chan_forget(&chans[i]);
}

static void chan_close_all(void) {
    for (int i = 0; i < CHAN_MAX; i++)
        if (chans[i].id) chan_forget(&chans[i]);
}

/* RUN flag SSH_AGENT: listen on <ssh_dir>/ssh-agent.sock for this run. */
static int ssh_listen(void) {
    char path[sizeof ssh_dir + sizeof SSH_SOCK_NAME + 1];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(path, sizeof path, "%s/%s", ssh_dir, SSH_SOCK_NAME);
    if (strlen(path) >= sizeof sa.sun_path) return -1;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (mkdir(ssh_dir, 0700) != 0 && errno != EEXIST) return -1;
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || chmod(path, 0600) != 0 ||
        listen(fd, 16) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}
static void ssh_close(void) {
    if (ssh_fd < 0) return;
    close(ssh_fd);
    ssh_fd = -1;
    char path[sizeof ssh_dir + sizeof SSH_SOCK_NAME + 1];
    snprintf(path, sizeof path, "%s/%s", ssh_dir, SSH_SOCK_NAME);
    unlink(path);
}
static void ssh_accept(void) {
    int fd = accept4(ssh_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    uint32_t id = AGENT_CHAN_BIT | next_agent_chan++;
    if (!chan_new(id, fd, 0)) { close(fd); return; }
    send_chan_u32(T_CHAN_OPEN, id, SERVICE_SSH_AGENT);
}

/* ---- RUN ---- */

struct reader {
    const uint8_t *p;
    size_t n, off;
    int bad;
};
static uint32_t rd_u32(struct reader *r) {
    if (r->n - r->off < 4) { r->bad = 1; return 0; }
    r->off += 4;
    return rd32(r->p + r->off - 4);
}
static char *rd_str(struct reader *r) { /* NUL-terminated copy; NULL (bad) on error */
    uint32_t len = rd_u32(r);
    if (r->bad || r->n - r->off < len || memchr(r->p + r->off, 0, len)) { r->bad = 1; return NULL; }
    char *s = malloc(len + 1);
    if (!s) abort();
    memcpy(s, r->p + r->off, len);
    s[len] = 0;
    r->off += len;
    return s;
}
static char **rd_list(struct reader *r) { /* NULL-terminated array */
    uint32_t count = rd_u32(r);
    if (r->bad || count > (r->n - r->off) / 4) { r->bad = 1; return NULL; }
    char **v = calloc((size_t)count + 1, sizeof *v);
    if (!v) abort();
    for (uint32_t i = 0; i < count && !r->bad; i++) v[i] = rd_str(r);
    return v;
}
static void free_list(char **v) {
    for (size_t i = 0; v && v[i]; i++) free(v[i]);
    free(v);
}

static void feed_entropy(const uint8_t *bytes) {
    struct { int entropy_count, buf_size; uint8_t buf[64]; } rpi = {512, 64, {0}};
    memcpy(rpi.buf, bytes, 64);
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    /* Crediting (root only) also mixes the bytes in; plain write only mixes. */
    if (geteuid() != 0 || ioctl(fd, SP_RNDADDENTROPY, &rpi) != 0)
        if (write(fd, bytes, 64) != 64) logmsg("write /dev/urandom: %s%s", strerror(errno), "");
    /* Mixing alone does not change what a restored crng hands out next: force a reseed
     * (RNDRESEEDCRNG, _IO('R', 0x07), root only) so two restores never share output. */
    if (geteuid() == 0) (void)ioctl(fd, _IO('R', 0x07));
    close(fd);
}

/* In the child: run a file that is not an executable format with /bin/sh, like a shell. */
static void exec_sh(const char *path, char **argv, char **envp) {
    size_t n = 0;
    while (argv[n]) n++;
    char **sh = calloc(n + 2, sizeof *sh);
    if (!sh) _exit(126);
    sh[0] = "/bin/sh";
    sh[1] = (char *)path;
    for (size_t i = 1; i < n; i++) sh[i + 1] = argv[i];
    execve("/bin/sh", sh, envp);
}

/* In the child: exec argv like a shell would, or print the shell's message and _exit
 * (spec section 5.5). argv[0] stays as given, as shells keep it. */
static void exec_program(char **argv, char **envp) {
    const char *name = argv[0], *path = DEFAULT_PATH;
    if (strchr(name, '/')) {
        execve(name, argv, envp);
        int e = errno;
        if (e == ENOEXEC) {
            exec_sh(name, argv, envp);
            e = errno;
        }
        dprintf(2, "%s: %s\n", name, strerror(e));
        _exit(e == ENOENT || e == ENOTDIR ? 127 : 126);
    }
    for (size_t i = 0; envp[i]; i++)
        if (!strncmp(envp[i], "PATH=", 5)) path = envp[i] + 5;
    int denied = 0;
    for (const char *dir = path;; dir++) {
        char full[4096];
        size_t dl = strcspn(dir, ":"); /* an empty PATH entry means the current directory */
        snprintf(full, sizeof full, "%.*s/%s", (int)(dl ? dl : 1), dl ? dir : ".", name);
        execve(full, argv, envp);
        if (errno == ENOEXEC) exec_sh(full, argv, envp);
        if (errno == EACCES) denied = 1;
        dir += dl;
        if (!*dir) break;
    }
    dprintf(2, denied ? "%s: Permission denied\n" : "%s: command not found\n", name);
    _exit(denied ? 126 : 127);
}

static void start_run(const uint8_t *body, uint32_t len) {
    if (len < 80) { send_error("malformed RUN: shorter than 80 bytes"); return; }
    uint32_t flags = rd32(body);
    if (flags & ~(uint32_t)(RUN_TTY | RUN_POWER_OFF | RUN_SSH_AGENT)) {
        send_error("malformed RUN: reserved flag bits set");
        return;
    }
    struct winsize ws = {.ws_row = rd16(body + 4), .ws_col = rd16(body + 6)};
    uint64_t rt_ns = (uint64_t)rd32(body + 8) | (uint64_t)rd32(body + 12) << 32;
    struct reader r = {.p = body, .n = len, .off = 80};
    char **argv = rd_list(&r), **envp = r.bad ? NULL : rd_list(&r);
    char *cwd = r.bad ? NULL : rd_str(&r);
    const char *problem = r.bad ? "malformed RUN: bad argv/env/cwd encoding"
                          : r.off != len ? "malformed RUN: trailing bytes"
                          : !argv[0] ? "malformed RUN: empty argv" : NULL;
    for (size_t i = 0; !problem && envp[i]; i++)
        if (!strchr(envp[i], '=')) problem = "malformed RUN: env entry without '='";
    if (problem) {
        send_error(problem);
        goto out;
    }
    if (!test_mode) {
        if (rt_ns) {
            struct timespec ts = {.tv_sec = (time_t)(rt_ns / 1000000000u),
                                  .tv_nsec = (long)(rt_ns % 1000000000u)};
            if (clock_settime(CLOCK_REALTIME, &ts) != 0)
                logmsg("clock_settime: %s%s", strerror(errno), "");
        }
        feed_entropy(body + 16);
    }

    if ((flags & RUN_SSH_AGENT) && ssh_fd < 0 && (ssh_fd = ssh_listen()) < 0) {
        send_error("cannot listen on the ssh-agent socket");
        goto out;
    }
    int tty = flags & RUN_TTY, child_in = -1, child_out = -1, child_err = -1, master = -1;
    int in_p[2] = {-1, -1}, out_p[2] = {-1, -1}, err_p[2] = {-1, -1};
    if (tty) {
        if (openpty(&master, &child_in, NULL, NULL, (ws.ws_row && ws.ws_col) ? &ws : NULL)) {
            dprintf(2, "smolpack-agent: openpty: %s\n", strerror(errno));
            send_error("cannot allocate a pty");
            goto out;
        }
        fcntl(master, F_SETFD, FD_CLOEXEC);
        fcntl(master, F_SETFL, O_NONBLOCK);
        child_out = child_err = child_in;
    } else {
        if (pipe2(in_p, O_CLOEXEC) || pipe2(out_p, O_CLOEXEC) || pipe2(err_p, O_CLOEXEC)) {
            send_error("cannot create pipes");
            goto out;
        }
        child_in = in_p[0];
        child_out = out_p[1];
        child_err = err_p[1];
        fcntl(in_p[1], F_SETFL, O_NONBLOCK);
        fcntl(out_p[0], F_SETFL, O_NONBLOCK);
        fcntl(err_p[0], F_SETFL, O_NONBLOCK);
    }
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* Every disposition back to default: exec keeps *ignored* signals ignored, and our
         * own start (SIGPIPE here; SIGINT/SIGQUIT when an agent is started from a background
         * job) must not leak into the program. */
        for (int s = 1; s < NSIG; s++)
            if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
        if (tty) {
            setsid();
            ioctl(child_in, TIOCSCTTY, 0);
        } else {
            setpgid(0, 0);
        }
        dup2(child_in, 0); /* dup2 clears FD_CLOEXEC on 0..2 */
        dup2(child_out, 1);
        dup2(child_err, 2);
        if (cwd[0] && chdir(cwd) != 0) {
            dprintf(2, "cd: %s: %s\n", cwd, strerror(errno));
            _exit(126);
        }
        if (!cwd[0] && chdir("/") != 0) _exit(126);
        exec_program(argv, envp);
    }
    if (tty) close(child_in);
    else { close(in_p[0]); close(out_p[1]); close(err_p[1]); }
    if (pid < 0) {
        send_error("fork failed");
        if (tty) close(master);
        else { close(in_p[1]); close(out_p[0]); close(err_p[0]); }
        goto out;
    }
    if (!tty) setpgid(pid, pid); /* also here, so SIGNAL right after start finds the group */
    run.pid = pid;
    run.tty = tty;
    run.power_off = !!(flags & RUN_POWER_OFF);
    run.in_fd = tty ? master : in_p[1];
    run.out_fd = tty ? master : out_p[0];
    run.err_fd = tty ? -1 : err_p[0];
    run.in_eof = run.reaped = run.status = 0;
    buf_clear(&run.inq);
    if (tty) send_frame(T_STDERR, NULL, 0); /* no separate stderr in tty mode */
    state = RUNNING;
out:
    free_list(argv);
    free_list(envp);
    free(cwd);
}

static void close_stdin(void) {
    if (run.in_fd >= 0 && !run.tty) close(run.in_fd);
    run.in_fd = -1;
    buf_clear(&run.inq);
}

static void write_stdin(void) {
    while (run.in_fd >= 0 && buf_used(&run.inq)) {
        ssize_t w = write(run.in_fd, run.inq.p + run.inq.off, buf_used(&run.inq));
        if (w > 0) { buf_consume(&run.inq, (size_t)w); continue; }
        if (w < 0 && (errno == EINTR)) continue;
        if (w < 0 && errno == EAGAIN) return;
        close_stdin(); /* EPIPE: the program closed its stdin; drop the rest */
        return;
    }
    if (run.in_fd >= 0 && run.in_eof && !run.tty) close_stdin();
}

/* Read one chunk of program output; on EOF (or EIO from a pty master) close and send EOF. */
static void pump_output(int *fd, uint8_t type) {
    uint8_t data[DATA_MAX];
    ssize_t n = read(*fd, data, sizeof data);
    if (n > 0) { send_frame(type, data, (size_t)n); return; }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    close(*fd);
    if (run.tty) run.in_fd = -1; /* the master was also the stdin side */
    *fd = -1;
    send_frame(type, NULL, 0);
}

static void drain_and_close(int *fd, uint8_t type) {
    uint8_t data[DATA_MAX];
    if (*fd < 0) return;
    for (ssize_t n; (n = read(*fd, data, sizeof data)) > 0;) send_frame(type, data, (size_t)n);
    close(*fd);
    if (run.tty) run.in_fd = -1;
    *fd = -1;
    send_frame(type, NULL, 0);
}

static void finish_run_if_done(void) {
    if (state != RUNNING || !run.reaped) return;
    if ((run.out_fd >= 0 || run.err_fd >= 0) && now_ms() - run.reaped_at_ms >= GRACE_MS &&
        buf_used(&outbuf) < OUT_HIGH) {
        /* A grandchild keeps the pipes open: take what is there, then stop waiting. */
        drain_and_close(&run.out_fd, T_STDOUT);
        drain_and_close(&run.err_fd, T_STDERR);
    }
    if (run.out_fd >= 0 || run.err_fd >= 0) return;
    close_stdin();
    uint8_t body[8];
    int sig = WIFSIGNALED(run.status);
    wr32(body, sig ? 1 : 0);
    wr32(body + 4, (uint32_t)(sig ? WTERMSIG(run.status) : WEXITSTATUS(run.status)));
    send_frame(T_EXIT, body, 8);
    ssh_close();
    chan_unmount_all(); /* host directories belong to one run */
    state = IDLE;
    if (run.power_off) {
        flush_out(1);
        power_off();
    }
}

static void reap(void) {
    struct signalfd_siginfo si;
    while (read(sig_fd, &si, sizeof si) > 0) {}
    int st;
    for (pid_t p; (p = waitpid(-1, &st, WNOHANG)) > 0;) {
        if (state == RUNNING && p == run.pid && !run.reaped) {
            run.reaped = 1;
            run.status = st;
            run.reaped_at_ms = now_ms();
        }
    }
}

static void handle_frame(uint8_t type, const uint8_t *body, uint32_t len) {
    if (type == T_HELLO) {
        if (len != 20) return;
        uint32_t version = rd32(body + 16);
        if (version < 1 || version > PROTOCOL_VERSION) {
            char msg[64];
            snprintf(msg, sizeof msg, "unsupported protocol version %u", rd32(body + 16));
            send_error(msg);
            return;
        }
        uint8_t ack[20 + 4 + sizeof AGENT_VERSION];
        memcpy(ack, body, 16);
        wr32(ack + 16, version); /* the HELLO's own version (spec 5.1) */
        wr32(ack + 20, (uint32_t)strlen(AGENT_VERSION));
        memcpy(ack + 24, AGENT_VERSION, strlen(AGENT_VERSION));
        send_frame(T_HELLO_ACK, ack, 24 + strlen(AGENT_VERSION));
        if (state == WAIT_HELLO) state = IDLE;
        return;
    }
    if (state == WAIT_HELLO) return; /* discard everything until a HELLO (spec section 6) */
    switch (type) {
    case T_RUN:
        if (state == RUNNING) send_error("busy: a program is already running");
        else start_run(body, len);
        break;
    case T_PREPARE:
        if (state == RUNNING) { send_error("busy: a program is running"); break; }
        chan_close_all(); /* forwards are run-time only: none belong in a saved state */
        sync();
        send_frame(T_READY, NULL, 0);
        flush_out(1);
        state = WAIT_HELLO;
        break;
    case T_STDIN:
        if (state != RUNNING || run.in_fd < 0 || run.in_eof) break;
        if (len) { buf_append(&run.inq, body, len); break; }
        run.in_eof = 1;
        if (run.tty) { /* closing the master would hang up: send VEOF instead */
            struct termios t;
            uint8_t veof = (tcgetattr(run.in_fd, &t) == 0) ? t.c_cc[VEOF] : 4;
            buf_append(&run.inq, &veof, 1);
        }
        break;
    case T_SIGNAL:
        if (state == RUNNING && len == 4 && !run.reaped) kill(-run.pid, (int)rd32(body));
        break;
    case T_RESIZE:
        if (state == RUNNING && run.tty && len == 4 && run.in_fd >= 0) {
            struct winsize ws = {.ws_row = rd16(body), .ws_col = rd16(body + 2)};
            ioctl(run.in_fd, TIOCSWINSZ, &ws);
        }
        break;
    case T_CHAN_OPEN: case T_CHAN_DATA: case T_CHAN_CLOSE: case T_CHAN_CREDIT:
        chan_frame(type, body, len);
        break;
    case T_MOUNT:
        chan_mount(body, len);
        break;
    default:
        break; /* agent-to-host types echoed back, or late frames: ignore */
    }
}

static void read_port(void) {
    uint8_t data[65536];
    ssize_t n = read(port_fd, data, sizeof data);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        if (test_mode) host_gone();
        port_backoff_until_ms = now_ms() + 50; /* host side not connected; poll later */
        return;
    }
    buf_append(&inbuf, data, (size_t)n);
    uint8_t type;
    const uint8_t *body;
    uint32_t len;
    while (next_frame(&type, &body, &len)) handle_frame(type, body, len);
}

static void serve(void) {
    for (;;) {
        struct pollfd pf[6 + CHAN_MAX];
        int n = 0, i_port = -1, i_sig, i_out = -1, i_err = -1, i_in = -1, timeout = -1;
        int i_ssh = -1, i_chan = 0, chan_of[CHAN_MAX];
        long long now = now_ms();
        short port_ev = buf_used(&outbuf) ? POLLOUT : 0;
        if (now < port_backoff_until_ms) {
            timeout = (int)(port_backoff_until_ms - now);
            port_ev = 0;
        } else if (!(state == RUNNING && buf_used(&run.inq) > IN_HIGH)) {
            port_ev |= POLLIN;
        }
        if (port_ev) { i_port = n; pf[n++] = (struct pollfd){.fd = port_fd, .events = port_ev}; }
        i_sig = n;
        pf[n++] = (struct pollfd){.fd = sig_fd, .events = POLLIN};
        if (state == RUNNING) {
            int room = buf_used(&outbuf) < OUT_HIGH;
            if (run.out_fd >= 0 && room)
                i_out = n, pf[n++] = (struct pollfd){.fd = run.out_fd, .events = POLLIN};
            if (run.err_fd >= 0 && room)
                i_err = n, pf[n++] = (struct pollfd){.fd = run.err_fd, .events = POLLIN};
            if (run.in_fd >= 0 && buf_used(&run.inq))
                i_in = n, pf[n++] = (struct pollfd){.fd = run.in_fd, .events = POLLOUT};
            if (ssh_fd >= 0 && room)
                i_ssh = n, pf[n++] = (struct pollfd){.fd = ssh_fd, .events = POLLIN};
            if (run.reaped) {
                long long left = run.reaped_at_ms + GRACE_MS - now;
                int t = left > 0 ? (int)left : 0;
                if (timeout < 0 || t < timeout) timeout = t;
            }
        }
        i_chan = n;
        for (int i = 0; i < CHAN_MAX; i++) {
            struct chan *c = &chans[i];
            short ev = 0;
            if (!c->id) continue;
            if (c->connecting || buf_used(&c->q)) ev |= POLLOUT;
            if (!c->connecting && !c->read_eof && !c->closing &&
                c->credit >= (c->mnt ? FUSE_BUF : 1) && buf_used(&outbuf) < OUT_HIGH)
                ev |= POLLIN;
            if (!ev) continue;
            chan_of[n - i_chan] = i;
            pf[n++] = (struct pollfd){.fd = c->fd, .events = ev};
        }
        if (poll(pf, (nfds_t)n, timeout) < 0) {
            if (errno == EINTR) continue;
            logmsg("poll: %s%s", strerror(errno), "");
            continue;
        }
        if (pf[i_sig].revents) reap();
        if (i_in >= 0 && pf[i_in].revents) write_stdin();
        if (i_out >= 0 && pf[i_out].revents && run.out_fd >= 0) pump_output(&run.out_fd, T_STDOUT);
        if (i_err >= 0 && pf[i_err].revents && run.err_fd >= 0) pump_output(&run.err_fd, T_STDERR);
        for (int k = i_chan; k < n; k++) {
            struct chan *c = &chans[chan_of[k - i_chan]];
            short re = pf[k].revents;
            if (!re || !c->id || c->fd != pf[k].fd) continue;
            if (c->connecting) { chan_connected(c); continue; }
            if (re & (POLLOUT | POLLERR | POLLHUP) && buf_used(&c->q)) chan_write(c);
            if (c->id && re & (POLLIN | POLLHUP | POLLERR) && (pf[k].events & POLLIN)) chan_read(c);
        }
        if (i_ssh >= 0 && pf[i_ssh].revents && ssh_fd >= 0) ssh_accept();
        if (i_port >= 0 && pf[i_port].revents & (POLLIN | POLLHUP | POLLERR)) read_port();
        if (state == RUNNING) write_stdin();
        finish_run_if_done();
        if (buf_used(&outbuf)) flush_out(0);
    }
}

int main(int argc, char **argv) {
    crc_init();
    signal(SIGPIPE, SIG_IGN); /* writes to a closed program stdin must return EPIPE */
    if (argc == 3 && !strcmp(argv[1], "--port-fd")) {
        test_mode = 1;
        port_fd = atoi(argv[2]);
        const char *dir = getenv("SMOLPACK_AGENT_RUN_DIR"); /* tests: not /run on the host */
        if (dir && *dir) snprintf(ssh_dir, sizeof ssh_dir, "%s", dir);
        fcntl(port_fd, F_SETFD, FD_CLOEXEC);
    } else if (argc == 2 && !strcmp(argv[1], "--version")) {
        printf("%s (protocol %u)\n", AGENT_VERSION, PROTOCOL_VERSION);
        return 0;
    } else if (argc > 1 && getpid() != 1) { /* as PID 1, ignore what the kernel passes on */
        dprintf(2, "usage: %s [--port-fd N | --version]\n", argv[0]);
        return 2;
    }
    if (port_fd < 0 || fcntl(port_fd, F_GETFD) < 0) {
        if (test_mode) { dprintf(2, "smolpack-agent: bad --port-fd\n"); return 2; }
        setup_guest();
        /* As PID 1 (QEMU), say so on the console: a build that gets no answer can then tell a
         * kernel that never started us (empty console) from an agent that found no port. */
        if (getpid() == 1) logmsg("started, looking for port %s%s", PORT_NAME, "");
        for (int tries = 0; (port_fd = open_port()) < 0; tries++) {
            if (tries == 500) logmsg("no virtio port named %s yet; still looking", PORT_NAME, "");
            usleep(tries < 500 ? 10000 : 1000000); /* 5 s fast, then once a second */
        }
    }
    fcntl(port_fd, F_SETFL, fcntl(port_fd, F_GETFL) | O_NONBLOCK);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    sig_fd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sig_fd < 0) { logmsg("signalfd: %s%s", strerror(errno), ""); return 1; }
    serve();
}
