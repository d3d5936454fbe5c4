/*
 * hs_counter.c - a C program on the Hot Spare Library: a counter and a ring of its history in
 * the checkpoint heap, a checkpoint every 10 steps. Killed and resumed, it goes on from its
 * last complete checkpoint. Prints "CPT <seq> <counter>" when a checkpoint is durable,
 * "RESUMED <counter> <ok|BAD>" on resume (BAD if the history ring is inconsistent), and
 * "SIGNAL" once SIGUSR1 arrives after a resume.
 */
#define _GNU_SOURCE
#include <hotspare.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RING 1000

struct state {
    long counter;
    long limit;
    long ring[RING];
};

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

static void worker(void)
{
    struct state *s = hs_root();
    if (hs_resumed()) {
        int ok = 1;
        for (long v = s->counter; v > 0 && v > s->counter - RING; v--)
            if (s->ring[v % RING] != v)
                ok = 0;
        printf("RESUMED %ld %s\n", s->counter, ok ? "ok" : "BAD");
        fflush(stdout);
        if (getenv("HS_COUNTER_WAIT_SIGNAL")) {
            while (!got_usr1)
                usleep(1000);
            printf("SIGNAL\n");
            fflush(stdout);
        }
        if (getenv("HS_COUNTER_EXIT_ON_RESUME"))
            exit(0);
    }
    while (s->counter < s->limit) {
        s->counter++;
        s->ring[s->counter % RING] = s->counter;
        if (s->counter % 10 == 0) {
            struct hs_cpt_stats st;
            int rc = hs_cpt(&st);
            if (rc == 0)
                rc = hs_wait_durable(st.seq);
            /* A checkpoint never taken: an error at once, not a wait that never ends. */
            if (rc == 0 && hs_wait_durable(st.seq + 1) != HS_EINVAL) {
                fprintf(stderr, "hs_wait_durable(%llu) did not fail with HS_EINVAL\n",
                        (unsigned long long)st.seq + 1);
                exit(1);
            }
            if (rc < 0) {
                fprintf(stderr, "hs_cpt: %s: %s\n", hs_strerror(rc), hs_last_error());
                exit(1);
            }
            printf("CPT %llu %ld\n", (unsigned long long)st.seq, s->counter);
            fflush(stdout);
        }
    }
    printf("DONE %ld\n", s->counter);
}

int main(int argc, char **argv)
{
    long limit = argc > 1 ? atol(argv[1]) : 1000000;
    if (hs_worker_register("main", worker) < 0 || hs_sigreg(SIGUSR1, "usr1", on_usr1) < 0) {
        fprintf(stderr, "register: %s\n", hs_last_error());
        return 1;
    }
    int rc = hs_init();
    if (rc < 0) {
        fprintf(stderr, "hs_init: %s: %s\n", hs_strerror(rc), hs_last_error());
        return 1;
    }
    struct state *s = hs_alloc(sizeof *s);
    if (s == NULL) {
        fprintf(stderr, "hs_alloc failed\n");
        return 1;
    }
    memset(s, 0, sizeof *s);
    s->limit = limit;
    hs_set_root(s);
    return hs_run() < 0;
}
