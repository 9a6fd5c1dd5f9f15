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

#endif
