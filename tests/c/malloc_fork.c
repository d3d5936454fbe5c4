/*
 * malloc_fork.c - fork-strategy checkpoints of a threaded C program whose malloc is the
 * checkpoint heap (libhotspare_malloc.so), while other threads allocate inside glibc's own
 * locks: one reads lines with getline (which mallocs under the FILE's lock), one calls
 * fflush(NULL) (which takes the list of FILEs, then each FILE's lock), one mallocs and frees.
 * A capture holds every allocator lock; if it then forked through glibc's fork(), which takes
 * the FILE list lock first, the three could deadlock. Prints "DONE <n>" after n checkpoints.
 */
#define _GNU_SOURCE
#include <hotspare.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_int stop;
static char text[64 * 1024];

static void *reader(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        FILE *f = fmemopen(text, sizeof text - 1, "r");
        if (f == NULL)
            abort();
        for (int i = 0; i < 50; i++) {
            char *line = NULL;
            size_t cap = 0;
            if (getline(&line, &cap, f) < 0) {
                free(line);
                break;
            }
            free(line);
        }
        fclose(f);
    }
    return NULL;
}

static void *flusher(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop))
        fflush(NULL);
    return NULL;
}

static void *churn(void *arg)
{
    (void)arg;
    unsigned r = 1;
    while (!atomic_load(&stop)) {
        r = r * 1103515245u + 12345u;
        free(malloc(16 + r % 4000));
    }
    return NULL;
}

static void worker(void)
{
    for (size_t i = 0; i + 1 < sizeof text; i++)
        text[i] = (i % 97 == 96) ? '\n' : 'a' + (char)(i % 26);
    pthread_t t[3];
    void *(*fns[3])(void *) = {reader, flusher, churn};
    for (int i = 0; i < 3; i++)
        if (pthread_create(&t[i], NULL, fns[i], NULL) != 0)
            abort();
    long *n = hs_root();
    for (int i = 0; i < 300; i++) {
        struct hs_cpt_stats st;
        int rc = hs_cpt(&st);
        if (rc < 0) {
            fprintf(stderr, "hs_cpt: %s: %s\n", hs_strerror(rc), hs_last_error());
            exit(1);
        }
        ++*n;
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    printf("DONE %ld\n", *n);
    fflush(stdout);
}

int main(void)
{
    if (hs_worker_register("main", worker) < 0 || hs_init() < 0) {
        fprintf(stderr, "hs_init: %s\n", hs_last_error());
        return 1;
    }
    long *n = malloc(sizeof *n);
    if (n == NULL)
        return 1;
    *n = 0;
    hs_set_root(n);
    return hs_run() < 0;
}
