/*
 * malloc_threads.c - red-team program for libhotspare_malloc.so: worker pthreads malloc, calloc,
 * posix_memalign, aligned_alloc, realloc and free blocks of a shared table concurrently (any
 * thread frees or resizes any other thread's block), workers end and are replaced all the time
 * (their slots are released and claimed again), and the main thread checkpoints in between,
 * every few checkpoints also running /bin/true through fork()+execv while the workers allocate.
 *
 * State (all malloc'ed after hs_init): a table of NENT entries {pointer, size, seed, align}.
 * Every block's bytes are a function of its seed; every access checks the block first (content,
 * alignment, malloc_usable_size), so a block the allocator hands out twice, or hands out while
 * it is live, is found as soon as either owner's bytes are looked at. The table is guarded by
 * NSTRIPE mutexes kept outside the heap; the main thread holds all of them around hs_cpt().
 *
 * Lines: "CPT <k> <ops> <live> <sum>" after checkpoint k is durable (sum: of the live entries'
 * seeds and sizes). On resume: "RESUMED <k> <ops> <live> <sum> <ok|BAD...>" after checking every
 * entry and that no two blocks overlap; then it goes on. After HS_MT_MORE more checkpoints
 * (default: never) it stops the workers, checks and frees everything, and prints "DONE <live> ok".
 * Any failed check prints "BAD <what>" and exits 3.
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NENT 1024
#define NSTRIPE 64
#define NWORKERS 4
#define OPS_PER_WORKER 3000

struct ent {
    unsigned char *p;
    size_t size;
    uint64_t seed;
    size_t align;
};

struct state {
    struct ent *ents;
    uint64_t ops;
    uint64_t cpts;
    uint64_t next_seed;
};

/* Outside the heap: a mutex captured while held would be held for ever after resume. */
static pthread_mutex_t stripe[NSTRIPE];
static struct state *S;
static volatile int stop;

static void bad(const char *what, long a, long b)
{
    printf("BAD %s %ld %ld\n", what, a, b);
    fflush(stdout);
    _exit(3);
}

static inline unsigned char byte_at(uint64_t seed, size_t k)
{
    return (unsigned char)((seed >> ((k & 7) * 8)) ^ (k >> 3) ^ (k * 131));
}

static void fill(unsigned char *p, size_t n, uint64_t seed)
{
    for (size_t k = 0; k < n; k++)
        p[k] = byte_at(seed, k);
}

static int same(const unsigned char *p, size_t n, uint64_t seed)
{
    for (size_t k = 0; k < n; k++)
        if (p[k] != byte_at(seed, k))
            return 0;
    return 1;
}

static void check(const struct ent *e, long i)
{
    if (((uintptr_t)e->p & (e->align - 1)) != 0)
        bad("misaligned", i, (long)e->align);
    if (malloc_usable_size(e->p) < e->size)
        bad("usable_size", i, (long)malloc_usable_size(e->p));
    if (!same(e->p, e->size, e->seed))
        bad("content", i, (long)e->size);
}

static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static size_t pick_size(uint64_t *x)
{
    unsigned r = rnd(x) % 100;
    if (r < 3)
        return 0;
    if (r < 70)
        return 1 + rnd(x) % 256;
    if (r < 90)
        return 257 + rnd(x) % (32 << 10);
    if (r < 99)
        return (32 << 10) + rnd(x) % (96 << 10);
    return (128 << 10) + rnd(x) % (896 << 10);
}

static uint64_t new_seed(void)
{
    return __atomic_add_fetch(&S->next_seed, 0x9E3779B97F4A7C15ull, __ATOMIC_RELAXED) | 1;
}

static void op(uint64_t *x)
{
    long i = (long)(rnd(x) % NENT);
    pthread_mutex_lock(&stripe[i % NSTRIPE]);
    struct ent *e = &S->ents[i];
    if (e->p == NULL) {
        size_t n = pick_size(x);
        size_t align = 16;
        unsigned char *p = NULL;
        switch (rnd(x) % 6) {
        case 0:
        case 1:
            p = malloc(n);
            break;
        case 2:
            p = calloc(1, n);
            if (p != NULL)
                for (size_t k = 0; k < n; k++)
                    if (p[k] != 0)
                        bad("calloc not zero", i, (long)k);
            break;
        case 3: {
            static const size_t aligns[] = {32, 64, 4096, 65536};
            align = aligns[rnd(x) % 4];
            void *q;
            int rc = posix_memalign(&q, align, n);
            if (rc != 0)
                bad("posix_memalign", rc, (long)n);
            p = q;
            break;
        }
        case 4:
            align = 128;
            p = aligned_alloc(align, (n + 127) & ~(size_t)127);
            break;
        default:
            p = realloc(NULL, n);
        }
        if (p == NULL)
            bad("alloc NULL", i, (long)n);
        e->p = p;
        e->size = n;
        e->align = align;
        e->seed = new_seed();
        fill(p, n, e->seed);
    } else {
        check(e, i);
        unsigned r = rnd(x) % 10;
        if (r < 4) {
            free(e->p);
            e->p = NULL;
        } else if (r < 8) {
            size_t n = pick_size(x);
            if (n == 0)
                n = 1; /* realloc(p, 0) frees: tested on its own */
            unsigned char *q = realloc(e->p, n);
            if (q == NULL)
                bad("realloc NULL", i, (long)n);
            size_t keep = n < e->size ? n : e->size;
            if (!same(q, keep, e->seed))
                bad("realloc lost bytes", i, (long)keep);
            e->p = q;
            e->size = n;
            e->align = 16;
            e->seed = new_seed();
            fill(q, n, e->seed);
        }
    }
    __atomic_add_fetch(&S->ops, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&stripe[i % NSTRIPE]);
}

static void *worker_thread(void *arg)
{
    uint64_t x = (uint64_t)(uintptr_t)arg * 0x2545F4914F6CDD1Dull + (uint64_t)time(NULL);
    x |= 1;
    for (int k = 0; k < OPS_PER_WORKER && !stop; k++)
        op(&x);
    return NULL;
}

static int cmp_ent(const void *a, const void *b)
{
    const struct ent *x = a, *y = b;
    return (uintptr_t)x->p < (uintptr_t)y->p ? -1 : (uintptr_t)x->p > (uintptr_t)y->p;
}

/* With every stripe held (or no workers): counts, sums and checks every live block. */
static void summary(int full, long *live, uint64_t *sum)
{
    static struct ent copy[NENT];
    long n = 0;
    *sum = 0;
    for (long i = 0; i < NENT; i++) {
        const struct ent *e = &S->ents[i];
        if (e->p == NULL)
            continue;
        if (full)
            check(e, i);
        *sum += e->seed * 31 + e->size;
        copy[n++] = *e;
    }
    *live = n;
    if (!full)
        return;
    qsort(copy, (size_t)n, sizeof copy[0], cmp_ent);
    for (long i = 1; i < n; i++)
        if (copy[i - 1].p + (copy[i - 1].size ? copy[i - 1].size : 1) > copy[i].p)
            bad("overlap", i, (long)copy[i - 1].size);
}

static void fork_exec(void)
{
    pid_t pid = fork();
    if (pid < 0)
        bad("fork", errno, 0);
    if (pid == 0) {
        /* The child of a threaded program: nothing that allocates before exec. */
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        bad("fork+exec child", st, 0);
    FILE *f = popen("echo popen-ok", "r");
    char buf[32] = {0};
    if (f == NULL || fgets(buf, sizeof buf, f) == NULL || strcmp(buf, "popen-ok\n") != 0)
        bad("popen", errno, 0);
    pclose(f);
}

static void worker(void)
{
    S = hs_root();
    for (int i = 0; i < NSTRIPE; i++)
        pthread_mutex_init(&stripe[i], NULL);
    long live;
    uint64_t sum;
    if (hs_resumed()) {
        summary(1, &live, &sum);
        printf("RESUMED %llu %llu %ld %llu ok\n", (unsigned long long)S->cpts,
               (unsigned long long)S->ops, live, (unsigned long long)sum);
        fflush(stdout);
    }
    const char *more = getenv("HS_MT_MORE");
    uint64_t last = more ? S->cpts + strtoull(more, NULL, 10) : UINT64_MAX;
    pthread_t th[NWORKERS];
    uintptr_t spawned = 0;
    for (int w = 0; w < NWORKERS; w++)
        if (pthread_create(&th[w], NULL, worker_thread, (void *)++spawned) != 0)
            bad("pthread_create", w, 0);
    while (S->cpts < last) {
        usleep(3000);
        /* Thread churn: a worker that is done is joined and replaced. */
        for (int w = 0; w < NWORKERS; w++)
            if (pthread_tryjoin_np(th[w], NULL) == 0 &&
                pthread_create(&th[w], NULL, worker_thread, (void *)++spawned) != 0)
                bad("pthread_create", w, 0);
        for (int i = 0; i < NSTRIPE; i++)
            pthread_mutex_lock(&stripe[i]);
        S->cpts++;
        summary(0, &live, &sum);
        struct hs_cpt_stats st;
        int rc = hs_cpt(&st);
        uint64_t k = S->cpts, ops = S->ops;
        for (int i = 0; i < NSTRIPE; i++)
            pthread_mutex_unlock(&stripe[i]);
        if (rc == 0)
            rc = hs_wait_durable(st.seq);
        if (rc < 0) {
            fprintf(stderr, "hs_cpt: %s: %s\n", hs_strerror(rc), hs_last_error());
            exit(1);
        }
        printf("CPT %llu %llu %ld %llu\n", (unsigned long long)k, (unsigned long long)ops, live,
               (unsigned long long)sum);
        fflush(stdout);
        if (k % 4 == 0)
            fork_exec();
    }
    stop = 1;
    for (int w = 0; w < NWORKERS; w++)
        pthread_join(th[w], NULL);
    summary(1, &live, &sum);
    for (long i = 0; i < NENT; i++) {
        free(S->ents[i].p);
        S->ents[i].p = NULL;
    }
    printf("DONE %ld ok\n", live);
    fflush(stdout);
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
    struct state *s = calloc(1, sizeof *s);
    if (s == NULL || (s->ents = calloc(NENT, sizeof *s->ents)) == NULL)
        return 1;
    s->next_seed = 12345;
    hs_set_root(s);
    return hs_run() < 0;
}
