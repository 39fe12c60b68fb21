// The floor of a TCP proxy on this machine: a byte forwarder with no HTTP parsing, no auth, no
// limits and no logging. Each accepted connection gets its own upstream connection, and bytes
// are copied both ways as they arrive. No gateway can use less CPU per proxied request than this
// with TCP on both sides, so its req/s against nginx's bounds what any gateway can reach here.
// Two event loops:
//   epoll: edge-triggered epoll, one recv and one send per message (a short read means the
//          socket is drained, so no recv that would block), epoll_wait amortised over ready fds
//   uring: io_uring (liburing): a receive posted on each socket, and on its completion a send of
//          the bytes to the other side, then the next receive once the send is done; every
//          submission and completion of a loop turn in one io_uring_enter
// It relies on messages that fit one socket buffer (the benchmark's requests and responses are
// a few hundred bytes); a send that would block or comes up short closes the pair.
// Usage: floor_proxy epoll|uring LISTEN_PORT UPSTREAM_PORT   (binds 127.0.0.1)
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { kBuf = 16384, kMaxFd = 65536 };

struct side {
  int fd, peer, closed;
  int sending;  // io_uring: bytes of the send in flight
  char buf[kBuf];
};
static struct side* sides[kMaxFd];

static int listen_on(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (bind(fd, (struct sockaddr*)&a, sizeof a) || listen(fd, 1024)) {
    perror("listen");
    exit(1);
  }
  return fd;
}

// A blocking connect (loopback answers at once), then both sockets non-blocking with TCP_NODELAY.
static int pair_up(int client, int upstream_port) {
  int up = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(upstream_port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (up < 0 || client >= kMaxFd || up >= kMaxFd || connect(up, (struct sockaddr*)&a, sizeof a)) {
    if (up >= 0) close(up);
    close(client);
    return -1;
  }
  int fds[2] = {client, up};
  for (int i = 0; i < 2; i++) {
    setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    struct side* s = malloc(sizeof *s);  // 16-byte aligned: the low bit of its address is free
    if (!s) {
      perror("malloc");
      exit(1);
    }
    s->closed = 0;
    s->fd = fds[i];
    s->peer = fds[1 - i];
    sides[fds[i]] = s;
  }
  return up;
}

static void close_pair(int fd) {
  struct side* s = sides[fd];
  if (!s) return;
  int peer = s->peer;
  free(s);
  sides[fd] = NULL;
  close(fd);
  if (sides[peer]) {
    free(sides[peer]);
    sides[peer] = NULL;
    close(peer);
  }
}

static void run_epoll(int lfd, int upstream_port) {
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[256];
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == lfd) {
        int c = accept4(lfd, NULL, NULL, 0);
        if (c < 0) continue;
        int up = pair_up(c, upstream_port);
        if (up < 0) continue;
        struct epoll_event e1 = {.events = EPOLLIN | EPOLLET | EPOLLRDHUP, .data.fd = c};
        struct epoll_event e2 = {.events = EPOLLIN | EPOLLET | EPOLLRDHUP, .data.fd = up};
        epoll_ctl(ep, EPOLL_CTL_ADD, c, &e1);
        epoll_ctl(ep, EPOLL_CTL_ADD, up, &e2);
        continue;
      }
      struct side* s = sides[fd];
      if (!s) continue;
      for (;;) {
        ssize_t r = recv(fd, s->buf, kBuf, 0);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (r <= 0 || send(s->peer, s->buf, (size_t)r, MSG_NOSIGNAL) != r) {
          close_pair(fd);
          break;
        }
        if (r < kBuf) break;  // drained: the next arrival raises a new edge
      }
    }
  }
}

// io_uring: user_data is the side's address | 1 for a send (the send's length is kept in the side
// to tell a short send). A closed side is shut down (its
// pending receive completes) and kept, so a late completion never lands on a reused fd number.
static void close_uring(struct side* s) {
  struct side* p = sides[s->peer] == NULL ? NULL : sides[s->peer];
  struct side* both[2] = {s, p && p->peer == s->fd ? p : NULL};
  for (int i = 0; i < 2; i++) {
    if (!both[i] || both[i]->closed) continue;
    both[i]->closed = 1;
    shutdown(both[i]->fd, SHUT_RDWR);
    close(both[i]->fd);
    if (sides[both[i]->fd] == both[i]) sides[both[i]->fd] = NULL;
  }
}

static void post_recv(struct io_uring* ring, int fd) {
  struct io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (!sqe) {
    io_uring_submit(ring);
    sqe = io_uring_get_sqe(ring);
  }
  io_uring_prep_recv(sqe, fd, sides[fd]->buf, kBuf, 0);
  sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;  // nothing is waiting yet when a receive is posted
  io_uring_sqe_set_data64(sqe, (unsigned long long)(uintptr_t)sides[fd]);
}

static void post_send(struct io_uring* ring, int fd, size_t len) {
  struct io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (!sqe) {
    io_uring_submit(ring);
    sqe = io_uring_get_sqe(ring);
  }
  sides[fd]->sending = (int)len;
  io_uring_prep_send(sqe, sides[fd]->peer, sides[fd]->buf, len, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, (unsigned long long)(uintptr_t)sides[fd] | 1);
}

static void run_uring(int lfd, int upstream_port) {
  struct io_uring ring;
  // One thread submits and reaps: completion work deferred to io_uring_enter, not interrupts.
  int rc = io_uring_queue_init(4096, &ring, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
  if (rc < 0) {
    fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-rc));
    exit(1);
  }
  const unsigned long long kAccept = ~0ULL;
  struct io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, 0);
  io_uring_sqe_set_data64(sqe, kAccept);
  for (;;) {
    io_uring_submit_and_wait(&ring, 1);
    struct io_uring_cqe* cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      seen++;
      unsigned long long ud = cqe->user_data;
      int res = cqe->res;
      if (ud == kAccept) {
        if (res >= 0) {
          int up = pair_up(res, upstream_port);
          if (up >= 0) {
            post_recv(&ring, res);
            post_recv(&ring, up);
          }
        }
        if (!(cqe->flags & IORING_CQE_F_MORE)) {
          sqe = io_uring_get_sqe(&ring);
          io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, 0);
          io_uring_sqe_set_data64(sqe, kAccept);
        }
        continue;
      }
      struct side* s = (struct side*)(uintptr_t)(ud & ~1ULL);
      if (s->closed) continue;
      if (ud & 1) {  // the send of s's bytes finished: receive on s again
        if (res != s->sending) close_uring(s);  // failed or short: the pair is closed
        else post_recv(&ring, s->fd);
      } else if (res <= 0) {
        close_uring(s);
      } else {
        post_send(&ring, s->fd, (size_t)res);
      }
    }
    io_uring_cq_advance(&ring, seen);
  }
}

int main(int argc, char** argv) {
  if (argc != 4 || (strcmp(argv[1], "epoll") && strcmp(argv[1], "uring"))) {
    fprintf(stderr, "usage: floor_proxy epoll|uring LISTEN_PORT UPSTREAM_PORT\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  int lfd = listen_on(atoi(argv[2]));
  if (!strcmp(argv[1], "epoll")) run_epoll(lfd, atoi(argv[3]));
  else run_uring(lfd, atoi(argv[3]));
  return 0;
}
