/*
 * glib_table.c - a C program whose state lives in GLib's data structures, allocated with plain
 * malloc (g_malloc, g_strdup, g_hash_table_new_full, g_array_append_val) and served from the
 * checkpoint heap by libhotspare_malloc.so. No Hot Spare allocator call anywhere: the state is a
 * GHashTable of strings (with g_str_hash and g_str_equal, function pointers into libglib, and
 * g_free as destroy functions) and a GArray that grows by realloc.
 *
 * Operation i (1-based) inserts "k<i>" -> "v<i>-<7i>" into the table and appends i to the
 * array; every fifth also removes "k<i-3>" (freeing its key and value). A checkpoint every 50
 * operations: prints "CPT <seq> <n>" once it is durable. With HS_GLIB_HANG_AT=N it does 17 more
 * operations after the checkpoint at N without a checkpoint, then waits to be killed. On
 * resume it checks every key, value and array element against what n operations must have left
 * and prints "RESUMED <n> <table size> <ok|BAD>", then goes on to the limit, destroys both
 * structures (every block freed in the resumed process) and prints "DONE <n>".
 */
#define _GNU_SOURCE
#include <hotspare.h>

#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct state {
    GHashTable *table;
    GArray *log;
    long n;
    long limit;
};

static int removed(long j, long n)
{
    return j + 3 <= n && (j + 3) % 5 == 0;
}

static void op(struct state *s)
{
    long i = ++s->n;
    g_hash_table_insert(s->table, g_strdup_printf("k%ld", i), g_strdup_printf("v%ld-%ld", i, 7 * i));
    g_array_append_val(s->log, i);
    if (i % 5 == 0 && i > 3) {
        char key[32];
        snprintf(key, sizeof key, "k%ld", i - 3);
        g_hash_table_remove(s->table, key);
    }
}

static int verify(const struct state *s)
{
    long want = 0;
    for (long j = 1; j <= s->n; j++) {
        char key[32], value[64];
        snprintf(key, sizeof key, "k%ld", j);
        snprintf(value, sizeof value, "v%ld-%ld", j, 7 * j);
        const char *got = g_hash_table_lookup(s->table, key);
        if (removed(j, s->n)) {
            if (got != NULL)
                return 0;
            continue;
        }
        want++;
        if (got == NULL || strcmp(got, value) != 0)
            return 0;
    }
    if ((long)g_hash_table_size(s->table) != want || (long)s->log->len != s->n)
        return 0;
    for (long j = 0; j < s->n; j++)
        if (g_array_index(s->log, long, j) != j + 1)
            return 0;
    return 1;
}

static void checkpoint(const struct state *s)
{
    struct hs_cpt_stats st;
    int rc = hs_cpt(&st);
    if (rc == 0)
        rc = hs_wait_durable(st.seq);
    if (rc < 0) {
        fprintf(stderr, "hs_cpt: %s: %s\n", hs_strerror(rc), hs_last_error());
        exit(1);
    }
    printf("CPT %llu %ld\n", (unsigned long long)st.seq, s->n);
    fflush(stdout);
}

static void worker(void)
{
    struct state *s = hs_root();
    if (hs_resumed()) {
        printf("RESUMED %ld %u %s\n", s->n, g_hash_table_size(s->table), verify(s) ? "ok" : "BAD");
        fflush(stdout);
    }
    const char *hang = getenv("HS_GLIB_HANG_AT");
    long hang_at = hang ? atol(hang) : -1;
    while (s->n < s->limit) {
        op(s);
        if (s->n % 50 == 0) {
            checkpoint(s);
            if (s->n == hang_at) {
                for (int k = 0; k < 17; k++)
                    op(s);
                for (;;)
                    pause();
            }
        }
    }
    g_hash_table_destroy(s->table);
    g_array_free(s->log, TRUE);
    printf("DONE %ld\n", s->n);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    long limit = argc > 1 ? atol(argv[1]) : 3000;
    if (hs_worker_register("main", worker) < 0) {
        fprintf(stderr, "register: %s\n", hs_last_error());
        return 1;
    }
    int rc = hs_init();
    if (rc < 0) {
        fprintf(stderr, "hs_init: %s: %s\n", hs_strerror(rc), hs_last_error());
        return 1;
    }
    /* From here on, malloc is the checkpoint heap. */
    struct state *s = malloc(sizeof *s);
    if (s == NULL)
        return 1;
    s->table = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    s->log = g_array_new(FALSE, FALSE, sizeof(long));
    s->n = 0;
    s->limit = limit;
    hs_set_root(s);
    return hs_run() < 0;
}
