/*
 * hotspare.h - the Hot Spare Library for C programs.
 *
 * Link with -lhotspare (libhotspare.so or libhotspare.a; see hotspare.pc). The library keeps a
 * program's state in a checkpoint heap at a fixed address, takes incremental checkpoints that
 * stop the caller for about a millisecond, writes them crash-safely to an image directory, and
 * resumes a killed program from its last complete checkpoint by calling its workers directly.
 *
 * Order of calls:
 *   hs_worker_register(...), hs_sigreg(...)   everything resume needs to find by name
 *   hs_init()                                 fresh start: returns 0. With HOTSPARE_RESUME=<dir>
 *                                             set: maps the image back, re-installs signal
 *                                             handlers, restores fds, calls the workers and
 *                                             exits; returns only on error.
 *   p = hs_alloc(n); ...; hs_set_root(p)      fresh start only: build the state
 *   hs_run()                                  calls the workers (one thread each but the first)
 * In a worker: hs_root() gives the state; hs_cpt() where it is consistent.
 *
 * Configuration (environment, or the TOML file named by HOTSPARE_CONFIG): HOTSPARE_IMAGE_DIR,
 * HOTSPARE_HEAP_BASE, HOTSPARE_HEAP_SIZE, HOTSPARE_BACKEND, HOTSPARE_STRATEGY, HOTSPARE_TERM.
 *
 * Errors: negative HS_E* codes; hs_strerror(code) describes the code, hs_last_error() gives the
 * full one-line message of the calling thread's last error.
 *
 * State must not point outside the checkpoint heap (no malloc'd memory, no string literals
 * stored as pointers, no function pointers).
 */
#ifndef HOTSPARE_H
#define HOTSPARE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HS_ECONFIG -1
#define HS_EHEAPADDR -2
#define HS_ENOMEM -3
#define HS_ETRACK -4
#define HS_EIMAGE -5
#define HS_EEXISTS -6
#define HS_EUNKNOWN -7
#define HS_EMETA -8
#define HS_ECPT -9
#define HS_EOS -10
#define HS_EINVAL -11
#define HS_EINTERNAL -12

/* Kinds for hs_fd_register. */
#define HS_FD_FILE 1         /* regular file: reopened at its checkpointed offset */
#define HS_FD_FILE_REFRESH 2 /* same, offset re-read at every checkpoint */
#define HS_FD_TCP_LISTENER 3 /* bound again to the same address on resume */
#define HS_FD_UNIX_LISTENER 4
#define HS_FD_CONNECTED 5    /* recorded; reported lost on resume */

struct hs_cpt_stats {
    uint64_t seq;        /* checkpoint sequence number */
    uint64_t stopped_ns; /* how long the caller was stopped */
    uint64_t pages;      /* pages captured */
    uint64_t bytes;      /* bytes captured */
    int full;            /* 1 if every page was captured */
    int strategy;        /* 1 copy, 2 fork */
};

typedef void (*hs_worker_fn)(void);
typedef void (*hs_signal_fn)(int);

int hs_worker_register(const char *name, hs_worker_fn fn);
int hs_sigreg(int signum, const char *name, hs_signal_fn fn);
int hs_init(void);
int hs_resumed(void);
int hs_run(void);

void *hs_alloc(size_t size);
void hs_free(void *p);
int hs_set_root(void *p);
void *hs_root(void);
int hs_register_range(void *addr, size_t len);
int hs_unregister_range(void *addr, size_t len);

int hs_fd_register(const char *name, int fd, int kind, const char *path);
int hs_fd_get(const char *name);

int hs_cpt(struct hs_cpt_stats *out);
int hs_cpt_full(struct hs_cpt_stats *out);
/* Waits until checkpoint seq is durable (HS_ECPT: it failed). A seq beyond the newest checkpoint
 * taken is HS_EINVAL, at once (nothing would end the wait). */
int hs_wait_durable(uint64_t seq);

/* Output commit (pipelined): hs_commit captures everything done so far and returns at once
 * with a ticket; release the replies that depend on it once hs_ticket_state(ticket) is 1
 * (0: pending; HS_ECPT: its checkpoint failed — do not report success). hs_commit_fd gives an
 * eventfd, readable whenever a checkpoint ends: register it with poll/epoll, read 8 bytes to
 * clear it. hs_wait_durable(ticket) blocks instead. hs_try_commit never waits: 1 and a
 * ticket if it took a checkpoint, 0 if the pipeline is full (nothing captured; try again once
 * hs_commit_fd is readable) — for a loop that holds its locks around the commit. */
int hs_commit(uint64_t *ticket);
int hs_try_commit(uint64_t *ticket);
int hs_ticket_state(uint64_t ticket);
int hs_commit_fd(void);

const char *hs_strerror(int code);
const char *hs_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* HOTSPARE_H */
