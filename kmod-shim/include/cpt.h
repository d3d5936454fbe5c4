/*
 * cpt.h - the Hot Spare checkpointing "system calls", emulated in user space by kmod-shim.
 *
 * Link with -lkmod_shim. The interface is the seed paper's (Hot Spare, section 2.2):
 *
 *   cptctl(ranges, n, CPT_ADD)     start tracking writes to the ranges (page-aligned,
 *                                  private read-write memory, no overlaps); returns 0.
 *   cptctl(ranges, n, CPT_REMOVE)  stop tracking exactly these ranges; returns 0.
 *   cptctl(buf, n, CPT_QUERY)      fill buf with up to n runs of pages written since the
 *                                  previous QUERY and return how many runs there were in
 *                                  all; runs that did not fit stay pending for the next
 *                                  QUERY. The next epoch starts atomically with the answer.
 *   cptfork()                      learn the dirty set, fork; returns the child's pid in the
 *                                  parent and 0 in the child, which sees memory frozen as at
 *                                  the fork and whose QUERY returns the fork-time dirty set.
 *
 * Errors: -1 with errno set (EINVAL unaligned/empty/bad op, EBUSY overlap or already
 * registered, EFAULT not mapped read-write, ENOENT not registered, ENOSPC table full,
 * EPERM not allowed in a cptfork child, ENOSYS backend unavailable); cpt_last_error()
 * returns the full message.
 *
 * The backend is chosen on first use: CPT_BACKEND=auto|uffd-wp|mprotect|soft-dirty|full
 * (default auto: the best one that works on this kernel).
 *
 * The cptfork() child of a multi-threaded process may only make async-signal-safe calls
 * (signal-safety(7)): cptctl(CPT_QUERY), read, write, writev, close, _exit.
 */
#ifndef KMOD_SHIM_CPT_H
#define KMOD_SHIM_CPT_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

struct cpt_range {
    void *addr;
    size_t len;
};

#define CPT_ADD 1
#define CPT_REMOVE 2
#define CPT_QUERY 3

ssize_t cptctl(struct cpt_range *ranges, size_t nranges, int op);
pid_t cptfork(void);
const char *cpt_backend(void);
const char *cpt_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* KMOD_SHIM_CPT_H */
