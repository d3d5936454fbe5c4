/*
 * malloc_full.c - red-team program for libhotspare_malloc.so: a small checkpoint heap filled to
 * the last byte. Blocks of every size class and large ones are malloc'ed into a list until
 * malloc returns NULL; then calloc, realloc (growing a live block), posix_memalign and
 * aligned_alloc must fail cleanly too (NULL / ENOMEM, the old block intact; also in a thread
 * whose first allocation it is), every block must
 * be intact, and a checkpoint must still be taken. Every other block is freed and the holes
 * filled again until NULL ("FULL <blocks> <bytes>"), the state checkpointed ("CPT"); then it
 * waits to be killed.
 *
 * On resume it checks every block ("RESUMED <blocks> ok"), frees them all, fills the heap again
 * until NULL in this process (it must hold at least half as much again: "REFILL <blocks> <bytes>
 * ok"), checks, checkpoints ("CPT") and waits. A failed check prints "BAD <what> <a> <b>" and
 * exits 3.
 */
#define _GNU_SOURCE
#include <hotspare.h>

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct blk {
    struct blk *next;
    size_t size; /* of the whole block, header included */
    uint64_t seed;
};

struct state {
    struct blk *head;
    long count;
    size_t bytes;
    uint64_t seed;
    long filled_once;
};

static void *(*volatile realloc_v)(void *, size_t) = realloc;

static void bad(const char *what, long a, long b)
{
    printf("BAD %s %ld %ld\n", what, a, b);
    fflush(stdout);
    _exit(3);
}

static unsigned char pat(uint64_t seed, size_t k)
{
    return (unsigned char)((seed >> ((k & 7) * 8)) + k);
}

static void check_all(const struct state *s)
{
    long n = 0;
    size_t bytes = 0;
    for (const struct blk *b = s->head; b != NULL; b = b->next) {
        const unsigned char *p = (const unsigned char *)(b + 1);
        for (size_t k = 0; k < b->size - sizeof *b; k++)
            if (p[k] != pat(b->seed, k))
                bad("block bytes", n, (long)k);
        n++;
        bytes += b->size;
    }
    if (n != s->count || bytes != s->bytes)
        bad("block count", n, s->count);
}

static struct blk *new_block(struct state *s, size_t size, int how)
{
    struct blk *b = NULL;
    if (how == 0) {
        b = malloc(size);
    } else if (how == 1) {
        b = calloc(1, size);
    } else {
        void *q;
        if (posix_memalign(&q, 64, size) == 0)
            b = q;
    }
    if (b == NULL)
        return NULL;
    b->size = size;
    b->seed = (s->seed += 0x9E3779B97F4A7C15ull);
    unsigned char *p = (unsigned char *)(b + 1);
    for (size_t k = 0; k < size - sizeof *b; k++)
        p[k] = pat(b->seed, k);
    b->next = s->head;
    s->head = b;
    s->count++;
    s->bytes += size;
    return b;
}

/* Allocates blocks of every size, largest first, until none fits. */
static void fill_up(struct state *s)
{
    static const size_t sizes[] = {1 << 20, 300000, 40000, 20000, 3000, 500, 200, 64, 32, 24};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int how = 0;
        errno = 0;
        while (new_block(s, sizes[i], how++ % 3) != NULL)
            ;
        if (errno != ENOMEM)
            bad("no ENOMEM", errno, (long)sizes[i]);
    }
}

/* A thread started before the heap is full, whose first allocation finds it full: it gets
 * NULL, it is not killed (its first thread-local with a destructor makes glibc allocate). */
static int late_pipe[2];
static pthread_t late;
static int late_waiting;

static void *late_thread(void *arg)
{
    char c;
    if (arg == NULL) {
        if (read(late_pipe[0], &c, 1) != 1)
            return NULL;
        /* A thread-local of the library's with a destructor (hs_last_error's buffer) first:
         * glibc callocs the destructor's list node, and aborts the process if it gets NULL. */
        (void)hs_last_error();
    }
    errno = 0;
    void *p = malloc(64 << 10);
    return p == NULL && errno == ENOMEM ? (void *)1 : NULL;
}

static void start_late_thread(void)
{
    if (pipe(late_pipe) != 0 || pthread_create(&late, NULL, late_thread, NULL) != 0)
        bad("late thread", errno, 0);
    late_waiting = 1;
}

/* The heap is full: every way of allocating fails cleanly and the blocks are intact. */
static void full_fails_cleanly(struct state *s)
{
    errno = 0;
    if (malloc(64 << 10) != NULL || errno != ENOMEM)
        bad("malloc when full", errno, 0);
    errno = 0;
    if (calloc(1000, 1000) != NULL || errno != ENOMEM)
        bad("calloc when full", errno, 0);
    void *q = &q;
    if (posix_memalign(&q, 4096, 1 << 20) != ENOMEM || q != &q)
        bad("posix_memalign when full", 0, 0);
    errno = 0;
    if (aligned_alloc(65536, 65536) != NULL || errno != ENOMEM)
        bad("aligned_alloc when full", errno, 0);
    /* Growing the newest block (a small one) to 4 MiB: NULL, the block unchanged. */
    errno = 0;
    if (realloc_v(s->head, 4 << 20) != NULL || errno != ENOMEM)
        bad("realloc when full", errno, 0);
    /* A new thread may not start (pthread_create mallocs its thread-local block: EAGAIN); if it
     * does, its first allocation gets NULL. */
    pthread_t t;
    void *got = NULL;
    if (pthread_create(&t, NULL, late_thread, (void *)1) == 0 &&
        (pthread_join(t, &got) != 0 || got != (void *)1))
        bad("first allocation of a new thread on a full heap", 0, 0);
    /* One that was waiting allocates for the first time and gets NULL. */
    if (late_waiting) {
        void *ok = NULL;
        late_waiting = 0;
        if (write(late_pipe[1], "x", 1) != 1 || pthread_join(late, &ok) != 0 || ok != (void *)1)
            bad("first allocation of a thread on a full heap", 0, 0);
    }
    check_all(s);
}

static void checkpoint(void)
{
    struct hs_cpt_stats st;
    int rc = hs_cpt(&st);
    if (rc == 0)
        rc = hs_wait_durable(st.seq);
    if (rc < 0) {
        printf("BAD hs_cpt %d %s\n", rc, hs_last_error());
        fflush(stdout);
        _exit(3);
    }
    printf("CPT\n");
    fflush(stdout);
}

static void worker(void)
{
    struct state *s = hs_root();
    start_late_thread();
    if (!hs_resumed()) {
        fill_up(s);
        full_fails_cleanly(s);
        /* Free every other block, fill the holes again. */
        struct blk **pp = &s->head;
        for (long i = 0; *pp != NULL; i++) {
            struct blk *b = *pp;
            if (i % 2 == 0) {
                *pp = b->next;
                s->count--;
                s->bytes -= b->size;
                free(b);
            } else {
                pp = &b->next;
            }
        }
        fill_up(s);
        full_fails_cleanly(s);
        s->filled_once = (long)s->bytes;
        printf("FULL %ld %zu\n", s->count, s->bytes);
        fflush(stdout);
    } else {
        check_all(s);
        printf("RESUMED %ld ok\n", s->count);
        fflush(stdout);
        while (s->head != NULL) {
            struct blk *b = s->head;
            s->head = b->next;
            free(b);
        }
        s->count = 0;
        s->bytes = 0;
        fill_up(s);
        full_fails_cleanly(s);
        if (s->bytes < (size_t)s->filled_once / 2)
            bad("refill smaller", (long)s->bytes, s->filled_once);
        printf("REFILL %ld %zu ok\n", s->count, s->bytes);
        fflush(stdout);
    }
    checkpoint();
    for (;;)
        pause();
}

int main(void)
{
    if (hs_worker_register("main", worker) < 0) {
        fprintf(stderr, "register: %s\n", hs_last_error());
        return 1;
    }
    int rc = hs_init();
    if (rc < 0) {
        fprintf(stderr, "hs_init: %s: %s\n", hs_strerror(rc), hs_last_error());
        return 1;
    }
    /* stdout's buffer before the heap is full (else stdio goes unbuffered: still correct). */
    printf("START\n");
    fflush(stdout);
    struct state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return 1;
    hs_set_root(s);
    return hs_run() < 0;
}
