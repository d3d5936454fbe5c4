/*
 * cpt_smoke.c - drives the cptctl()/cptfork() C ABI of kmod-shim the way the seed paper's
 * programs would. Exits 0 when every check passes; prints the first failed check otherwise.
 * Run with CPT_BACKEND=uffd-wp|mprotect|full|auto.
 */
#define _GNU_SOURCE
#include <cpt.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGES 64

static long page;
static char *mem;
static int exact;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "cpt_smoke: %s:%d: check failed: %s: ", __FILE__, \
                    __LINE__, #cond);                                        \
            fprintf(stderr, __VA_ARGS__);                                    \
            fprintf(stderr, "\n");                                           \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

static size_t pg(const struct cpt_range *r) { return (size_t)((char *)r->addr - mem) / page; }
static size_t npg(const struct cpt_range *r) { return r->len / page; }

int main(void)
{
    page = sysconf(_SC_PAGESIZE);
    mem = mmap(NULL, PAGES * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    struct cpt_range all = {mem, PAGES * page};
    CHECK(cptctl(&all, 1, CPT_ADD) == 0, "ADD: %s", cpt_last_error());
    const char *backend = cpt_backend();
    CHECK(backend != NULL, "no backend");
    exact = strcmp(backend, "full") != 0;
    printf("cpt_smoke: backend %s\n", backend);

    /* Refusals: one clear error each, errno as a system call would set it. */
    struct cpt_range bad = {mem + 8, page};
    CHECK(cptctl(&bad, 1, CPT_ADD) == -1 && errno == EINVAL, "unaligned ADD accepted");
    CHECK(strstr(cpt_last_error(), "not page-aligned") != NULL, "message: %s", cpt_last_error());
    CHECK(cptctl(&all, 1, CPT_ADD) == -1 && errno == EBUSY, "double ADD accepted");
    CHECK(cptctl(&all, 1, 42) == -1 && errno == EINVAL, "bad op accepted");

    /* Writes show in the next QUERY, as coalesced runs. */
    struct cpt_range buf[8];
    mem[3 * page] = 1;
    mem[4 * page + 9] = 1;
    mem[10 * page] = 1;
    ssize_t n = cptctl(buf, 8, CPT_QUERY);
    if (exact) {
        CHECK(n == 2, "QUERY returned %zd runs", n);
        CHECK(pg(&buf[0]) == 3 && npg(&buf[0]) == 2, "run 0 = %zu+%zu", pg(&buf[0]), npg(&buf[0]));
        CHECK(pg(&buf[1]) == 10 && npg(&buf[1]) == 1, "run 1 = %zu+%zu", pg(&buf[1]), npg(&buf[1]));
        CHECK(cptctl(buf, 8, CPT_QUERY) == 0, "idle epoch reported runs");
    } else {
        CHECK(n == 1 && npg(&buf[0]) == PAGES, "full backend: %zd runs", n);
    }

    /* A buffer too small loses nothing: the rest comes with the next QUERY. */
    if (exact) {
        mem[1 * page] = 2;
        mem[20 * page] = 2;
        mem[30 * page] = 2;
        n = cptctl(buf, 1, CPT_QUERY);
        CHECK(n == 3 && pg(&buf[0]) == 1, "short QUERY: %zd", n);
        n = cptctl(buf, 8, CPT_QUERY);
        CHECK(n == 2 && pg(&buf[0]) == 20 && pg(&buf[1]) == 30, "rest: %zd", n);
    }

    /* cptfork: the child sees memory as at the fork, and the fork-time dirty set. */
    int go[2];
    CHECK(pipe(go) == 0, "pipe");
    mem[5 * page] = 'A';
    pid_t pid = cptfork();
    CHECK(pid >= 0, "cptfork: %s", cpt_last_error());
    if (pid == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) != 1) /* wait until the parent has overwritten page 5 */
            _exit(2);
        struct cpt_range got[8];
        ssize_t k = cptctl(got, 8, CPT_QUERY);
        if (exact && (k != 1 || pg(&got[0]) != 5 || npg(&got[0]) != 1))
            _exit(3);
        if (mem[5 * page] != 'A')
            _exit(4);
        struct cpt_range again = {mem, page};
        if (cptctl(&again, 1, CPT_REMOVE) != -1 || errno != EPERM)
            _exit(5);
        _exit(0);
    }
    close(go[0]);
    mem[5 * page] = 'B';
    CHECK(write(go[1], "x", 1) == 1, "pipe write");
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed with status %d",
          WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
    CHECK(mem[5 * page] == 'B', "parent lost its write");
    /* The parent's epoch restarted at the fork: only its own later write shows. */
    n = cptctl(buf, 8, CPT_QUERY);
    if (exact)
        CHECK(n == 1 && pg(&buf[0]) == 5, "parent after fork: %zd runs", n);

    CHECK(cptctl(&all, 1, CPT_REMOVE) == 0, "REMOVE: %s", cpt_last_error());
    CHECK(cptctl(&all, 1, CPT_REMOVE) == -1 && errno == ENOENT, "double REMOVE accepted");
    mem[7 * page] = 3; /* still writable after REMOVE */
    printf("cpt_smoke: ok\n");
    return 0;
}
