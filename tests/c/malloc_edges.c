/*
 * malloc_edges.c - red-team program for libhotspare_malloc.so: the corners of the malloc API and
 * glibc functions that allocate on the program's behalf, with their results kept as state
 * across SIGKILL + resume.
 *
 * Each run (fresh or resumed) first checks the edges (edges()): malloc(0), realloc(p, 0),
 * requests too large for any heap (NULL with ENOMEM, the old block intact), bad and huge
 * alignments, a realloc chain from 1 B to 8 MiB and back, over-aligned blocks (64 B to 1 MiB)
 * resized and freed, calloc zeroing blocks just freed dirty, and blocks malloc'ed before
 * hs_init freed or resized after it. Then it builds the state (build()): strings from strdup,
 * strndup, asprintf and getline, an open_memstream buffer, a reallocarray array, a scandir
 * list, a 64 KiB-aligned block, a 3 MiB realloc'ed buffer, a malloc(0) block, and runs
 * glibc functions that allocate internally (qsort, wide printf, setlocale, regcomp, getpwuid,
 * many fopen/fclose). It checkpoints and prints "READY <gen>", then waits to be killed.
 *
 * On resume it checks the state of the previous run ("RESUMED <gen> ok"), frees all of it in
 * this process (blocks glibc allocated in the dead one), checks the edges again, and builds
 * the next generation; with HS_EDGE_FINISH=1 it prints "DONE <gen> ok" instead. A failed check
 * prints "BAD <what> <a> <b>" and exits 3.
 */
#define _GNU_SOURCE
#include <hotspare.h>

#include <dirent.h>
#include <errno.h>
#include <locale.h>
#include <malloc.h>
#include <pwd.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHAIN (3u << 20)
#define NARR 50000

struct state {
    long gen;
    char *dup, *ndup, *fmt, *line;
    size_t line_len;
    char *mem;
    size_t mem_len;
    long *arr;
    struct dirent **dirs;
    int ndirs;
    char *first_dir;
    unsigned char *aligned;
    unsigned char *chain;
    void *zero;
};

static void bad(const char *what, long a, long b)
{
    printf("BAD %s %ld %ld\n", what, a, b);
    fflush(stdout);
    _exit(3);
}

static unsigned char pat(size_t k, unsigned seed)
{
    return (unsigned char)(k * 7 + seed + (k >> 9));
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t k = 0; k < n; k++)
        p[k] = pat(k, seed);
}

static void expect(const unsigned char *p, size_t n, unsigned seed, const char *what)
{
    for (size_t k = 0; k < n; k++)
        if (p[k] != pat(k, seed))
            bad(what, (long)k, (long)n);
}

static void expect_null(void *p, const char *what)
{
    if (p != NULL)
        bad(what, (long)(uintptr_t)p, 0);
    if (errno != ENOMEM)
        bad(what, errno, -1);
}

/* Called through volatile pointers: the compiler neither warns about nor optimises on what it
 * knows of these functions (a failed realloc leaves the block live; huge sizes are the point). */
static void *(*volatile malloc_v)(size_t) = malloc;
static void *(*volatile calloc_v)(size_t, size_t) = calloc;
static void *(*volatile realloc_v)(void *, size_t) = realloc;
static void *(*volatile reallocarray_v)(void *, size_t, size_t) = reallocarray;

/* Blocks malloc'ed before hs_init (glibc's): freed and resized after it. */
static unsigned char *pre_a, *pre_b, *pre_c;
static char *pre_s;

static void before_init(void)
{
    pre_a = malloc(100);
    pre_b = malloc(50);
    void *q;
    if (pre_a == NULL || pre_b == NULL || posix_memalign(&q, 64, 200) != 0)
        bad("pre-init malloc", 0, 0);
    pre_c = q;
    fill(pre_a, 100, 1);
    fill(pre_b, 50, 2);
    fill(pre_c, 200, 3);
    pre_s = strdup("allocated before hs_init");
}

static void after_init(void)
{
    if (pre_a == NULL)
        return;
    expect(pre_a, 100, 1, "pre-init a");
    free(pre_a);
    pre_b = realloc(pre_b, 1 << 20);
    if (pre_b == NULL)
        bad("pre-init realloc", 0, 0);
    expect(pre_b, 50, 2, "pre-init b after realloc");
    fill(pre_b, 1 << 20, 4);
    pre_b = realloc(pre_b, 10);
    expect(pre_b, 10, 4, "pre-init b shrunk");
    free(pre_b);
    pre_c = realloc(pre_c, 10000);
    if (pre_c == NULL)
        bad("pre-init aligned realloc", 0, 0);
    expect(pre_c, 200, 3, "pre-init c after realloc");
    free(pre_c);
    if (strcmp(pre_s, "allocated before hs_init") != 0)
        bad("pre-init strdup", 0, 0);
    pre_s = realloc(pre_s, 4000);
    free(pre_s);
    pre_a = NULL;
}

static void edges(void)
{
    /* malloc(0): distinct, freeable pointers. */
    void *z1 = malloc(0), *z2 = malloc(0), *z3 = realloc(NULL, 0);
    if (z1 == NULL || z2 == NULL || z3 == NULL || z1 == z2 || z2 == z3 || z1 == z3)
        bad("malloc(0)", 0, 0);
    free(z1);
    free(z2);
    free(z3);
    /* realloc(p, 0) frees p (glibc) and returns NULL. */
    if (realloc(malloc(100), 0) != NULL)
        bad("realloc(p, 0)", 0, 0);

    /* Too large for any heap: NULL with ENOMEM, never a crash; the old block stays. */
    unsigned char *keep = malloc(1000);
    fill(keep, 1000, 9);
    static const size_t huge[] = {SIZE_MAX,         SIZE_MAX - 15,    SIZE_MAX - 16,
                                  SIZE_MAX / 2,     PTRDIFF_MAX,      PTRDIFF_MAX - 31,
                                  (size_t)1 << 40, (size_t)3 << 30,   (size_t)1 << 28};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        size_t n = huge[i];
        errno = 0;
        expect_null(malloc_v(n), "malloc huge");
        errno = 0;
        expect_null(calloc_v(n, 1), "calloc huge");
        errno = 0;
        expect_null(calloc_v(1, n), "calloc huge 2");
        errno = 0;
        expect_null(realloc_v(keep, n), "realloc huge");
        expect(keep, 1000, 9, "block kept by a failed realloc");
        errno = 0;
        expect_null(aligned_alloc(64, n), "aligned_alloc huge");
        errno = 0;
        expect_null(memalign(4096, n), "memalign huge");
        errno = 0;
        expect_null(valloc(n), "valloc huge");
        errno = 0;
        expect_null(pvalloc(n), "pvalloc huge");
        void *q = &q;
        int rc = posix_memalign(&q, 65536, n);
        if (rc != ENOMEM || q != &q)
            bad("posix_memalign huge", rc, (long)i);
        unsigned char *a;
        if (posix_memalign((void **)&a, 64, 64) != 0)
            bad("posix_memalign 64", 0, 0);
        fill(a, 64, 5);
        errno = 0;
        expect_null(realloc_v(a, n), "aligned realloc huge");
        expect(a, 64, 5, "aligned block kept by a failed realloc");
        free(a);
    }
    errno = 0;
    expect_null(calloc_v(SIZE_MAX / 2, 3), "calloc overflow");
    expect_null(calloc_v((size_t)1 << 33, (size_t)1 << 33), "calloc overflow 2");
    free(keep);

    /* Bad and huge alignments. */
    void *q = &q;
    if (posix_memalign(&q, 3, 10) != EINVAL || posix_memalign(&q, 4, 10) != EINVAL ||
        posix_memalign(&q, 0, 10) != EINVAL || q != &q)
        bad("posix_memalign bad alignment", 0, 0);
    static const size_t big_align[] = {(size_t)1 << 30, (size_t)1 << 40, (size_t)1 << 62,
                                       (size_t)1 << 63};
    for (size_t i = 0; i < sizeof big_align / sizeof big_align[0]; i++) {
        int rc = posix_memalign(&q, big_align[i], 16);
        if (rc == 0) {
            if (((uintptr_t)q & (big_align[i] - 1)) != 0)
                bad("huge alignment not met", (long)i, 0);
            free(q);
        } else if (rc != ENOMEM) {
            bad("posix_memalign huge alignment", rc, (long)i);
        }
        errno = 0;
        void *r = aligned_alloc(big_align[i], 16);
        if (r != NULL)
            free(r);
    }

    /* A realloc chain from 1 B to 8 MiB and back, bytes kept at every step. */
    unsigned char *p = malloc(1);
    size_t n = 1;
    unsigned seed = 11;
    fill(p, 1, seed);
    int grow = 1;
    for (unsigned step = 0; step < 100; step++) {
        if (n >= (8u << 20))
            grow = 0;
        size_t m = grow ? n * 2 + (step % 3) * 8 : n / 3 + 1;
        if (!grow && n <= 3)
            m = 1;
        p = realloc(p, m);
        if (p == NULL)
            bad("realloc chain", (long)m, 0);
        expect(p, m < n ? m : n, seed, "realloc chain kept");
        fill(p, m, ++seed);
        n = m;
        if (!grow && n == 1)
            break;
    }
    free(p);

    /* Over-aligned blocks: aligned, resized (bytes kept), freed. */
    static const size_t aligns[] = {32, 64, 256, 4096, 8192, 65536, 1 << 20};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        size_t al = aligns[i];
        static const size_t sizes[] = {0, 1, 100, 4096, 70000};
        for (size_t j = 0; j < sizeof sizes / sizeof sizes[0]; j++) {
            void *v;
            if (posix_memalign(&v, al, sizes[j]) != 0 || ((uintptr_t)v & (al - 1)) != 0)
                bad("posix_memalign", (long)al, (long)sizes[j]);
            unsigned char *b = v;
            fill(b, sizes[j], 20);
            if (malloc_usable_size(b) < sizes[j])
                bad("aligned usable size", (long)al, (long)sizes[j]);
            b = realloc(b, sizes[j] * 3 + 5);
            if (b == NULL)
                bad("aligned realloc grow", (long)al, 0);
            expect(b, sizes[j], 20, "aligned realloc grow");
            fill(b, sizes[j] * 3 + 5, 21);
            b = realloc(b, sizes[j] / 2 + 1);
            expect(b, sizes[j] / 2 + 1, 21, "aligned realloc shrink");
            free(b);
            unsigned char *c = aligned_alloc(al, sizes[j]);
            unsigned char *d = memalign(al, sizes[j]);
            if (c == NULL || d == NULL || ((uintptr_t)c & (al - 1)) || ((uintptr_t)d & (al - 1)))
                bad("aligned_alloc/memalign", (long)al, (long)sizes[j]);
            free(c);
            free(d);
        }
    }
    long pg = sysconf(_SC_PAGESIZE);
    unsigned char *v = valloc(10), *w = pvalloc(10);
    if (v == NULL || w == NULL || ((uintptr_t)v % pg) || ((uintptr_t)w % pg) ||
        malloc_usable_size(w) < (size_t)pg)
        bad("valloc/pvalloc", 0, 0);
    memset(w, 1, pg);
    free(v);
    free(w);

    /* calloc zeroes blocks that were just freed dirty, in every class. */
    static const size_t csz[] = {1, 16, 24, 100, 1000, 5000, 32768, 40000, 200000};
    for (size_t i = 0; i < sizeof csz / sizeof csz[0]; i++) {
        unsigned char *blk[64];
        for (int k = 0; k < 64; k++) {
            blk[k] = malloc(csz[i]);
            memset(blk[k], 0xAA, csz[i]);
        }
        for (int k = 0; k < 64; k++)
            free(blk[k]);
        for (int k = 0; k < 64; k++) {
            blk[k] = calloc(csz[i], 1);
            for (size_t b = 0; b < csz[i]; b++)
                if (blk[k][b] != 0)
                    bad("calloc not zero", (long)csz[i], (long)b);
        }
        for (int k = 0; k < 64; k++)
            free(blk[k]);
    }
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static int only_named(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

static void build(struct state *s, long gen)
{
    s->gen = gen;
    s->dup = strdup("a string from strdup");
    s->ndup = strndup("strndup keeps only the first part", 13);
    if (asprintf(&s->fmt, "gen %ld %0*d", gen, 100000, 7) < 0)
        bad("asprintf", 0, 0);

    /* getline on lines up to 300 000 bytes: its buffer grows by realloc. */
    FILE *f = tmpfile();
    if (f == NULL)
        bad("tmpfile", errno, 0);
    for (int len = 1; len <= 300000; len = len * 3 + 1) {
        for (int k = 0; k < len; k++)
            fputc('a' + (k + len) % 26, f);
        fputc('\n', f);
    }
    rewind(f);
    s->line = NULL;
    size_t cap = 0;
    ssize_t got, last = 0;
    while ((got = getline(&s->line, &cap, f)) > 0)
        last = got;
    fclose(f);
    s->line_len = (size_t)last;

    FILE *m = open_memstream(&s->mem, &s->mem_len);
    for (int k = 0; k < 100000; k++)
        fprintf(m, "%05d,", k);
    fclose(m);

    s->arr = NULL;
    for (size_t k = 0, cap2 = 0; k < NARR; k++) {
        if (k == cap2) {
            cap2 = cap2 ? cap2 * 2 : 1;
            long *a = reallocarray(s->arr, cap2, sizeof *a);
            if (a == NULL)
                bad("reallocarray", (long)cap2, 0);
            s->arr = a;
        }
        s->arr[k] = (long)((k * 7919) % NARR);
    }
    qsort(s->arr, NARR, sizeof s->arr[0], cmp_long);
    errno = 0;
    if (reallocarray_v(s->arr, SIZE_MAX / 4, 8) != NULL || errno != ENOMEM)
        bad("reallocarray overflow", errno, 0);

    s->ndirs = scandir("/", &s->dirs, only_named, alphasort);
    if (s->ndirs <= 0)
        bad("scandir", errno, 0);
    s->first_dir = strdup(s->dirs[0]->d_name);

    void *a;
    if (posix_memalign(&a, 65536, 100000) != 0)
        bad("posix_memalign state", 0, 0);
    s->aligned = a;
    fill(s->aligned, 100000, (unsigned)gen);
    s->chain = NULL;
    for (size_t n = 1;; n *= 2) {
        s->chain = realloc(s->chain, n < CHAIN ? n : CHAIN);
        if (s->chain == NULL)
            bad("chain", (long)n, 0);
        if (n >= CHAIN)
            break;
    }
    fill(s->chain, CHAIN, (unsigned)gen + 1);
    s->zero = malloc(0);

    /* glibc functions that allocate internally, results not kept. */
    FILE *null = fopen("/dev/null", "w");
    if (null == NULL || fprintf(null, "%*d|%.*f", 200000, 1, 5000, 1.0) < 200000)
        bad("wide printf", errno, 0);
    fclose(null);
    /* A missing locale is not the allocator's fault: the result is not checked. */
    (void)setlocale(LC_ALL, "C.UTF-8");
    setlocale(LC_ALL, "C");
    regex_t re;
    if (regcomp(&re, "^(a|b)+[0-9]{2,5}$", REG_EXTENDED) != 0 ||
        regexec(&re, "abab123", 0, NULL, 0) != 0)
        bad("regex", 0, 0);
    regfree(&re);
    struct passwd *pw = getpwuid(0);
    if (pw == NULL || strcmp(pw->pw_name, "root") != 0)
        bad("getpwuid", errno, 0);
    for (int k = 0; k < 200; k++) {
        FILE *g = fopen("/proc/self/stat", "r");
        char buf[64];
        if (g == NULL || fgets(buf, sizeof buf, g) == NULL)
            bad("fopen", errno, k);
        fclose(g);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        bad("opendir", errno, 0);
    while (readdir(d) != NULL)
        ;
    closedir(d);
}

static void verify(const struct state *s, long gen)
{
    if (s->gen != gen)
        bad("gen", s->gen, gen);
    if (strcmp(s->dup, "a string from strdup") != 0 || strcmp(s->ndup, "strndup keeps") != 0)
        bad("strdup", 0, 0);
    char head[32];
    snprintf(head, sizeof head, "gen %ld ", gen);
    size_t hl = strlen(head);
    if (strncmp(s->fmt, head, hl) != 0 || strlen(s->fmt) != hl + 100000 ||
        s->fmt[hl + 99999] != '7' || s->fmt[hl] != '0')
        bad("asprintf", 0, 0);
    int longest = 1;
    while (longest * 3 + 1 <= 300000)
        longest = longest * 3 + 1;
    if (s->line_len != (size_t)longest + 1 || s->line[longest] != '\n')
        bad("getline", (long)s->line_len, longest);
    for (int k = 0; k < longest; k++)
        if (s->line[k] != 'a' + (k + longest) % 26)
            bad("getline bytes", k, 0);
    if (s->mem_len != 600000 || strncmp(s->mem + 599994, "99999,", 6) != 0 ||
        s->mem[600000] != 0)
        bad("memstream", (long)s->mem_len, 0);
    for (long k = 0; k < NARR; k++)
        if (s->arr[k] != k)
            bad("sorted array", k, s->arr[k]);
    if (strcmp(s->first_dir, s->dirs[0]->d_name) != 0)
        bad("scandir", 0, 0);
    for (int k = 1; k < s->ndirs; k++)
        if (strcmp(s->dirs[k - 1]->d_name, s->dirs[k]->d_name) >= 0)
            bad("scandir order", k, 0);
    if ((uintptr_t)s->aligned % 65536 != 0)
        bad("aligned state", 0, 0);
    expect(s->aligned, 100000, (unsigned)gen, "aligned state bytes");
    expect(s->chain, CHAIN, (unsigned)gen + 1, "chain bytes");
    if (s->zero == NULL)
        bad("malloc(0) state", 0, 0);
}

static void release(struct state *s)
{
    free(s->dup);
    free(s->ndup);
    free(s->fmt);
    free(s->line);
    free(s->mem);
    free(s->arr);
    for (int k = 0; k < s->ndirs; k++)
        free(s->dirs[k]);
    free(s->dirs);
    free(s->first_dir);
    free(s->aligned);
    free(s->chain);
    free(s->zero);
}

static void checkpoint(void)
{
    struct hs_cpt_stats st;
    int rc = hs_cpt(&st);
    if (rc == 0)
        rc = hs_wait_durable(st.seq);
    if (rc < 0) {
        fprintf(stderr, "hs_cpt: %s: %s\n", hs_strerror(rc), hs_last_error());
        exit(1);
    }
}

static void worker(void)
{
    struct state *s = hs_root();
    long gen = s->gen;
    if (hs_resumed()) {
        verify(s, gen);
        printf("RESUMED %ld ok\n", gen);
        fflush(stdout);
        release(s);
        if (getenv("HS_EDGE_FINISH") != NULL) {
            edges();
            printf("DONE %ld ok\n", gen);
            fflush(stdout);
            return;
        }
    }
    after_init();
    edges();
    build(s, gen + 1);
    verify(s, gen + 1);
    checkpoint();
    printf("READY %ld\n", gen + 1);
    fflush(stdout);
    for (;;)
        pause();
}

int main(void)
{
    before_init();
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
    if (s == NULL)
        return 1;
    hs_set_root(s);
    return hs_run() < 0;
}
