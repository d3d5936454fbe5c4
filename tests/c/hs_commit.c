/*
 * hs_commit.c - the output-commit C ABI on a local image (no spare): hs_commit and a ticket
 * released through hs_commit_fd + hs_ticket_state, as an event loop does it; hs_try_commit,
 * which never waits (1 with a ticket, or 0 while the pipeline is full), in a burst; tickets
 * increasing and every one durable at the end. Prints "COMMIT ok <taken> <full>".
 */
#define _GNU_SOURCE
#include <hotspare.h>

#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void fail(const char *what, int rc)
{
    fprintf(stderr, "%s: %d %s: %s\n", what, rc, hs_strerror(rc), hs_last_error());
    exit(1);
}

static void worker(void)
{
    long *n = hs_root();
    int fd = hs_commit_fd();
    if (fd < 0)
        fail("hs_commit_fd", fd);
    ++*n;
    uint64_t t1 = 0;
    int rc = hs_commit(&t1);
    if (rc != 0 || t1 == 0)
        fail("hs_commit", rc);
    /* The event loop's way: wait for the descriptor, clear it, ask. */
    int state = 0;
    for (int i = 0; i < 200 && state == 0; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) > 0) {
            uint64_t v;
            if (read(fd, &v, sizeof v) != sizeof v)
                fail("read eventfd", -1);
        }
        state = hs_ticket_state(t1);
        if (state < 0)
            fail("hs_ticket_state", state);
    }
    if (state != 1)
        fail("ticket never durable", state);
    /* Nothing in flight: a try takes one. */
    uint64_t t2 = 0;
    rc = hs_try_commit(&t2);
    if (rc != 1 || t2 <= t1)
        fail("hs_try_commit with nothing in flight", rc);
    /* A burst: each try is taken or finds the pipeline full, never an error or a wait. */
    long taken = 0, full = 0;
    uint64_t last = t2;
    /* Until five are taken (the local pipeline holds one: each try while it is being made
     * durable finds it full), bounded. */
    for (int i = 0; i < 200000 && taken < 5; i++) {
        ++*n;
        uint64_t t = 0;
        rc = hs_try_commit(i % 2 ? &t : NULL);
        if (rc < 0)
            fail("hs_try_commit", rc);
        if (rc == 1) {
            taken++;
            if (t != 0) {
                if (t <= last)
                    fail("tickets not increasing", (int)t);
                last = t;
            }
        } else {
            full++;
            usleep(50);
        }
    }
    rc = hs_wait_durable(last);
    if (rc != 0)
        fail("hs_wait_durable", rc);
    if (hs_ticket_state(t1) != 1 || hs_ticket_state(t2) != 1 || hs_ticket_state(last) != 1)
        fail("an earlier ticket is not durable", 0);
    printf("COMMIT ok %ld %ld\n", taken, full);
    fflush(stdout);
}

int main(void)
{
    if (hs_worker_register("main", worker) < 0 || hs_init() < 0) {
        fprintf(stderr, "hs_init: %s\n", hs_last_error());
        return 1;
    }
    long *n = hs_alloc(sizeof *n);
    if (n == NULL)
        return 1;
    *n = 0;
    hs_set_root(n);
    return hs_run() < 0;
}
