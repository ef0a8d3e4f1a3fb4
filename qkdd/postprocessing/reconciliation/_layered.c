/*
 * Layered sum-product syndrome decoding of LDPC codes: the hot loop of
 * qkdd.postprocessing.reconciliation.decoder (which documents the algorithm
 * and validates every argument before calling in here).
 *
 * Compiled C rather than numba: numba (LLVM) left the check-node loops
 * scalar, and with them the decoder at 6.5-7 ns per edge and iteration; the
 * same loops vectorised by GCC run at about 3 ns. Each check's edges are
 * processed in three passes so that the compiler can vectorise the first two
 * (gathers of the posteriors, arithmetic, table lookups) and only the
 * scatter of the new posteriors stays scalar. The variables of one check are
 * distinct, so the scatter never writes one posterior twice.
 *
 * Floating-point flags (setup.py): reassociation for the vectorised sums,
 * no NaN/Inf (every input is finite: the LLRs, the known-bit magnitude and
 * the phi table), no -ffast-math (its start-up code would switch the whole
 * process to flush-to-zero).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* AVX2/FMA where the CPU has them, chosen once at load time; plain x86-64
 * elsewhere. x86-64-v3 beat v4 (AVX-512) and znver4 tuning here: GCC then
 * emulates the gathers with scalar loads, which Zen 4 runs faster. */
#define DECODER_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DECODER_CLONES
#endif

/* Posteriors of graphs with more variables than this (4 bytes each) outgrow a
 * core's L2 cache (1 MB on the Zen 4 development machine): the sweep then
 * prefetches the posteriors of the check PREFETCH_AHEAD checks ahead. On the
 * megabit code this made decoding 7-9 % faster; on the 98 304-bit codes, whose
 * posteriors stay in L2, the prefetches cost 4-11 %, hence the threshold. */
#define PREFETCH_MIN_VARIABLES 262144
#define PREFETCH_AHEAD 2

static inline int32_t
float_bits(float x)
{
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits;
}

/* Index of phi(x) in the table: x's exponent and top mantissa bits. */
static inline int32_t
phi_index(float x, int shift, int32_t offset, int32_t last)
{
    int32_t i = (float_bits(x) >> shift) - offset;
    i = i < 0 ? 0 : i;
    return i > last ? last : i;
}

typedef struct {
    const int32_t *check_ptr;
    const int32_t *check_vars;
    int64_t checks;
    int64_t variables;
    const float *llr;
    const uint8_t *target;
    const float *table;
    int32_t table_last;
    int shift;
    int32_t offset;
    float settled;
    int64_t max_iterations;
    int64_t stall;
    float *messages;
    uint8_t *hard;
    /* scratch */
    float *posterior;
    float *incoming;
    float *phis;
    float *updated;
} Decoding;

/* One pass over every check; returns the number of checks the signs of their
 * updated posteriors leave unsatisfied. Pointer parameters, not the struct:
 * GCC honours restrict on parameters, and without it cannot vectorise. */
DECODER_CLONES static int64_t
sweep(const int32_t *restrict check_ptr, const int32_t *restrict check_vars, int64_t checks,
      const uint8_t *restrict target, const float *restrict table, int32_t last, int shift,
      int32_t offset, float settled, float *restrict all_messages, float *restrict posterior,
      float *restrict incoming, float *restrict phis, float *restrict updated, int prefetch)
{
    int64_t unsatisfied = 0;
    for (int64_t c = 0; c < checks; c++) {
        const int32_t start = check_ptr[c];
        const int32_t degree = check_ptr[c + 1] - start;
        const int32_t *restrict vars = check_vars + start;
        float *restrict messages = all_messages + start;
        int32_t negative = target[c];
        int32_t held = target[c];
        float least = FLT_MAX;
        float total = 0.0f;
        if (prefetch && c + PREFETCH_AHEAD < checks) {
            const int32_t *restrict ahead = check_vars + check_ptr[c + PREFETCH_AHEAD];
            const int32_t ahead_degree =
                check_ptr[c + PREFETCH_AHEAD + 1] - check_ptr[c + PREFETCH_AHEAD];
            for (int32_t k = 0; k < ahead_degree; k++)
                __builtin_prefetch(posterior + ahead[k], 1, 3);
        }
        for (int32_t k = 0; k < degree; k++) {
            const float before = posterior[vars[k]];
            held ^= before < 0.0f;
            const float t = before - messages[k];
            incoming[k] = t;
            negative ^= t < 0.0f;
            const float a = fabsf(t);
            least = a < least ? a : least;
            const float ph = table[phi_index(a, shift, offset, last)];
            phis[k] = ph;
            total += ph;
        }
        if (least > settled && negative == 0 && held == 0)
            continue; /* settled: keep its messages (forced convergence) */
        int32_t parity = target[c];
        for (int32_t k = 0; k < degree; k++) {
            const float t = incoming[k];
            float rest = total - phis[k];
            rest = rest > 0.0f ? rest : 0.0f;
            const float magnitude = table[phi_index(rest, shift, offset, last)];
            const int32_t flip = negative ^ (t < 0.0f);
            const float message = flip ? -magnitude : magnitude;
            messages[k] = message;
            const float post = t + message;
            updated[k] = post;
            parity ^= post < 0.0f;
        }
        for (int32_t k = 0; k < degree; k++)
            posterior[vars[k]] = updated[k];
        unsatisfied += parity;
    }
    return unsatisfied;
}

static int
satisfies_every_check(const Decoding *d)
{
    for (int64_t v = 0; v < d->variables; v++)
        d->hard[v] = d->posterior[v] < 0.0f;
    for (int64_t c = 0; c < d->checks; c++) {
        uint8_t acc = d->target[c];
        for (int32_t e = d->check_ptr[c]; e < d->check_ptr[c + 1]; e++)
            acc ^= d->hard[d->check_vars[e]];
        if (acc)
            return 0;
    }
    return 1;
}

/* Decodes; returns the iterations used and sets *ok. */
static int64_t
run(const Decoding *d, int *ok)
{
    memcpy(d->posterior, d->llr, (size_t)d->variables * sizeof(float));
    const int64_t edges = d->check_ptr[d->checks];
    for (int64_t e = 0; e < edges; e++)
        d->posterior[d->check_vars[e]] += d->messages[e];
    int64_t fewest = d->checks + 1, stalled = 0, it;
    *ok = 0;
    for (it = 1; it <= d->max_iterations; it++) {
        const int64_t unsatisfied =
            sweep(d->check_ptr, d->check_vars, d->checks, d->target, d->table, d->table_last,
                  d->shift, d->offset, d->settled, d->messages, d->posterior, d->incoming,
                  d->phis, d->updated, d->variables > PREFETCH_MIN_VARIABLES);
        if (unsatisfied) {
            if (unsatisfied < fewest) {
                fewest = unsatisfied;
                stalled = 0;
            }
            else if (++stalled >= d->stall) {
                break; /* no progress for a while: report failure early */
            }
            continue;
        }
        if (satisfies_every_check(d)) {
            *ok = 1;
            return it;
        }
    }
    satisfies_every_check(d); /* fills the hard decision */
    return it > d->max_iterations ? d->max_iterations : it;
}

static int
expect_size(const Py_buffer *buffer, Py_ssize_t items, Py_ssize_t item_size, const char *name)
{
    if (buffer->len != items * item_size) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, expected %zd", name, buffer->len,
                     items * item_size);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(decode_doc,
             "decode(check_ptr, check_vars, llr, target, table, shift, offset, settled,\n"
             "       max_iterations, stall, messages, hard) -> (ok, iterations)\n\n"
             "Layered sum-product decoding; messages and hard are written in place.\n"
             "Use qkdd.postprocessing.reconciliation.decoder.decode_from instead.");

static PyObject *
decode(PyObject *self, PyObject *args)
{
    Py_buffer ptr, vars, llr, target, table, messages, hard;
    int shift, offset;
    float settled;
    long long max_iterations, stall;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*iifLLw*w*", &ptr, &vars, &llr, &target, &table,
                          &shift, &offset, &settled, &max_iterations, &stall, &messages, &hard))
        return NULL;
    PyObject *result = NULL;
    Decoding d = {0};
    const Py_ssize_t checks = ptr.len / (Py_ssize_t)sizeof(int32_t) - 1;
    const Py_ssize_t variables = llr.len / (Py_ssize_t)sizeof(float);
    const Py_ssize_t edges = vars.len / (Py_ssize_t)sizeof(int32_t);
    const Py_ssize_t entries = table.len / (Py_ssize_t)sizeof(float);
    if (max_iterations < 1) {
        PyErr_SetString(PyExc_ValueError, "max_iterations must be at least 1");
        goto done;
    }
    if (checks < 0 || entries < 1 || !expect_size(&target, checks, 1, "target")
        || !expect_size(&messages, edges, sizeof(float), "messages")
        || !expect_size(&hard, variables, 1, "hard"))
        goto done;
    const int32_t *p = ptr.buf;
    int32_t max_degree = 0;
    if (p[0] != 0 || p[checks] != edges) {
        PyErr_SetString(PyExc_ValueError, "check_ptr does not span check_vars");
        goto done;
    }
    for (Py_ssize_t c = 0; c < checks; c++) {
        const int32_t degree = p[c + 1] - p[c];
        if (degree < 0) {
            PyErr_SetString(PyExc_ValueError, "check_ptr is not ascending");
            goto done;
        }
        max_degree = degree > max_degree ? degree : max_degree;
    }
    const int32_t *v = vars.buf;
    for (Py_ssize_t e = 0; e < edges; e++) {
        if (v[e] < 0 || v[e] >= variables) {
            PyErr_SetString(PyExc_ValueError, "check_vars names a variable out of range");
            goto done;
        }
    }
    d = (Decoding){
        .check_ptr = p,
        .check_vars = v,
        .checks = checks,
        .variables = variables,
        .llr = llr.buf,
        .target = target.buf,
        .table = table.buf,
        .table_last = (int32_t)(entries - 1),
        .shift = shift,
        .offset = offset,
        .settled = settled,
        .max_iterations = max_iterations,
        .stall = stall < 1 ? 1 : stall,
        .messages = messages.buf,
        .hard = hard.buf,
    };
    const size_t scratch = (size_t)variables + 3 * (size_t)max_degree + 1;
    d.posterior = PyMem_RawMalloc(scratch * sizeof(float));
    if (d.posterior == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    d.incoming = d.posterior + variables;
    d.phis = d.incoming + max_degree;
    d.updated = d.phis + max_degree;
    int ok = 0;
    int64_t iterations = 0;
    Py_BEGIN_ALLOW_THREADS
    iterations = run(&d, &ok);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(d.posterior);
    result = Py_BuildValue("(OL)", ok ? Py_True : Py_False, (long long)iterations);
done:
    PyBuffer_Release(&ptr);
    PyBuffer_Release(&vars);
    PyBuffer_Release(&llr);
    PyBuffer_Release(&target);
    PyBuffer_Release(&table);
    PyBuffer_Release(&messages);
    PyBuffer_Release(&hard);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS, decode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "qkdd.postprocessing.reconciliation._layered",
    .m_doc = "Layered sum-product LDPC syndrome decoder (compiled).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__layered(void)
{
    return PyModule_Create(&module);
}
