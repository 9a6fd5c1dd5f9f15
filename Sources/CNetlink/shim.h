#ifndef MESH_AGENT_CNETLINK_SHIM_H
#define MESH_AGENT_CNETLINK_SHIM_H

#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/inet_diag.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <libmnl/libmnl.h>
#include <libnftnl/table.h>
#include <libnftnl/chain.h>
#include <libnftnl/rule.h>
#include <libnftnl/expr.h>
#include <libnftnl/set.h>
#include <libnftnl/batch.h>
#include <libnftnl/udata.h>
#include <libnftnl/common.h>

/* setns(2) and CLONE_NEWNET are only declared by glibc under _GNU_SOURCE, which
 * would change libc's struct definitions for every module; declare what we use. */
int setns(int fd, int nstype);
static inline int cnetlink_clone_newnet(void) { return 0x40000000; /* CLONE_NEWNET */ }
static inline int cnetlink_so_original_dst(void) { return SO_ORIGINAL_DST; }
static inline int cnetlink_ip6t_so_original_dst(void) { return IP6T_SO_ORIGINAL_DST; }

/* statfs(2) f_type of a path (Glibc's Swift module does not export sys/vfs.h):
 * LinuxNet checks that a cgroup path is on cgroup2 (CGROUP2_SUPER_MAGIC). */
#include <sys/vfs.h>
static inline int cnetlink_statfs_type(const char *path, int64_t *type) {
    struct statfs s;
    int r = statfs(path, &s);
    if (r == 0) *type = (int64_t)s.f_type;
    return r;
}

/* File descriptors passed over a Unix socket (SCM_RIGHTS): how listening
 * sockets go to systemd's file descriptor store and from an agent to the one
 * that takes over from it. CMSG_* are macros Swift cannot import. At most
 * CNETLINK_MAX_FDS descriptors per message. */
#include <string.h>
#include <unistd.h>
#include <sys/un.h>
#define CNETLINK_MAX_FDS 64
static inline long cnetlink_send_fds(int sock, const struct sockaddr *to, unsigned int tolen,
                                     const void *data, unsigned long len, const int *fds, int count) {
    if (count < 0 || count > CNETLINK_MAX_FDS) return -1;
    struct iovec iov = { (void *)data, len };
    union { char buffer[CMSG_SPACE(sizeof(int) * CNETLINK_MAX_FDS)]; struct cmsghdr align; } control;
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    memset(&control, 0, sizeof(control));
    message.msg_name = (void *)to;
    message.msg_namelen = tolen;
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    if (count > 0) {
        message.msg_control = control.buffer;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * count);
        memcpy(CMSG_DATA(header), fds, sizeof(int) * count);
    }
    return sendmsg(sock, &message, MSG_NOSIGNAL);
}

/* Receives one message and the descriptors that came with it (close-on-exec);
 * *received is how many were stored in fds (up to max; extra ones are closed). */
static inline long cnetlink_recv_fds(int sock, void *data, unsigned long len, int *fds, int max, int *received) {
    struct iovec iov = { data, len };
    union { char buffer[CMSG_SPACE(sizeof(int) * CNETLINK_MAX_FDS)]; struct cmsghdr align; } control;
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof(control.buffer);
    *received = 0;
    long got = recvmsg(sock, &message, MSG_CMSG_CLOEXEC);
    if (got < 0) return got;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header != NULL; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        const int *incoming = (const int *)CMSG_DATA(header);
        for (int i = 0; i < count; i++) {
            if (*received < max) fds[(*received)++] = incoming[i];
            else close(incoming[i]);
        }
    }
    if (message.msg_flags & MSG_CTRUNC) return -2;
    return got;
}


/* Kernel splicing (splice(2) through a pipe, driven by epoll): the relay that
 * moves plaintext legs from socket to socket without copying through user
 * space. splice and pipe2 are GNU extensions the headers hide without
 * _GNU_SOURCE, and struct epoll_event is packed, which Swift does not lay out;
 * these wrappers take plain values. */
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <errno.h>
#define CNETLINK_SPLICE_F_MOVE 1
#define CNETLINK_SPLICE_F_NONBLOCK 2
#define CNETLINK_F_SETPIPE_SZ 1031

/* Moves up to len bytes from in to out, one of them a pipe, without blocking. */
static inline long cnetlink_splice(int in, int out, unsigned long len) {
    return syscall(SYS_splice, in, NULL, out, NULL, len, CNETLINK_SPLICE_F_MOVE | CNETLINK_SPLICE_F_NONBLOCK);
}

/* A non-blocking, close-on-exec pipe; fds[0] reads, fds[1] writes. */
static inline int cnetlink_pipe(int fds[2]) {
    return (int)syscall(SYS_pipe2, fds, O_NONBLOCK | O_CLOEXEC);
}

static inline int cnetlink_set_pipe_size(int fd, int size) {
    return fcntl(fd, CNETLINK_F_SETPIPE_SZ, size);
}

static inline uint32_t cnetlink_epoll_in(void) { return EPOLLIN; }
static inline uint32_t cnetlink_epoll_out(void) { return EPOLLOUT; }
static inline uint32_t cnetlink_epoll_rdhup(void) { return EPOLLRDHUP; }
static inline uint32_t cnetlink_epoll_hup(void) { return EPOLLHUP; }
static inline uint32_t cnetlink_epoll_err(void) { return EPOLLERR; }
static inline uint32_t cnetlink_epoll_et(void) { return EPOLLET; }

static inline int cnetlink_epoll_add(int epoll, int fd, uint32_t events, uint64_t data) {
    struct epoll_event event;
    memset(&event, 0, sizeof(event));
    event.events = events;
    event.data.u64 = data;
    return epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
}

static inline int cnetlink_epoll_delete(int epoll, int fd) {
    struct epoll_event event;
    memset(&event, 0, sizeof(event));
    return epoll_ctl(epoll, EPOLL_CTL_DEL, fd, &event);
}

/* Waits for up to max events; each one's data and event bits land in the two arrays. */
static inline int cnetlink_epoll_wait(int epoll, uint64_t *data, uint32_t *events, int max, int timeout) {
    struct epoll_event ready[64];
    if (max > 64) max = 64;
    int count = epoll_wait(epoll, ready, max, timeout);
    for (int i = 0; i < count; i++) {
        data[i] = ready[i].data.u64;
        events[i] = ready[i].events;
    }
    return count;
}

static inline int cnetlink_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }


#endif
