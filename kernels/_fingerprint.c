/* The O(size) step of the array fingerprint (kernels/fingerprint.py defines it):
 *
 *   contract_last(values, w, out):  out[r] = sum_c bits(values[r, c]) * w[c]   (mod 2**64)
 *   contract_line(values, dim, start) = sum_i bits(values[i]) * T_dim[start + i] (mod 2**64)
 *   fill_weights(dim, start, out):  out[i] = T_dim[start + i]
 *
 * ``values`` is any buffer whose last axis is contiguous (leading axes: any strides, negative
 * included), elements of 1, 2, 4 or 8 bytes read as unsigned integers of their stored bits
 * (native byte order, any alignment); r runs over the leading axes in C order. ``w`` and ``out``
 * are C-contiguous uint64 buffers. Every call releases the GIL while it computes, so writer
 * threads fingerprint their chunks in parallel; the buffers stay exported (numpy refuses to
 * resize them) until it returns.
 *
 * Plain CPython C API and the buffer protocol, no numpy headers: it builds with a C compiler
 * and Python's headers alone, and tierpoint falls back to numpy without it.
 *
 * Speed: the loops are written for the auto-vectoriser. For elements of up to 32 bits each
 * weight is split into 32-bit halves, x*w = x*lo(w) + (x*hi(w) << 32) mod 2**64, so every
 * product is a 32x32->64 multiply (vpmuludq); 64-bit elements use a full 64-bit multiply
 * (vpmullq with AVX-512DQ, else what the compiler makes of it). The same loops are compiled
 * three times, for baseline x86-64, AVX2 and AVX-512, and the best the CPU supports is picked
 * at import (the wheel runs on any x86-64 CPU); other architectures get the baseline only.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define INLINE static inline __attribute__((always_inline))
#define ALIGN64 __attribute__((aligned(64)))
/* Element loads that are legal at any address (a numpy view may start at an odd byte). */
typedef uint16_t u16_any __attribute__((aligned(1), may_alias));
typedef uint32_t u32_any __attribute__((aligned(1), may_alias));
typedef uint64_t u64_any __attribute__((aligned(1), may_alias));
#else
#define INLINE static inline
#define ALIGN64
typedef uint16_t u16_any;
typedef uint32_t u32_any;
typedef uint64_t u64_any;
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86_DISPATCH 1
#endif

/* ------------------------------------------------------------------ the weights T_dim[n] */

#define K_INDEX 0xD6E8FEB86659FD93ULL
#define K_DIM 0x632BE59BD9B4E019ULL
#define K_GOLDEN 0x9E3779B97F4A7C15ULL

/* T_dim[n] = splitmix64(n * K_INDEX + (dim + 1) * K_DIM) | 1, all mod 2**64 (fingerprint.weights). */
INLINE uint64_t weight_at(uint64_t seed, uint64_t n)
{
    uint64_t z = n * K_INDEX + seed + K_GOLDEN;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return (z ^ (z >> 31)) | 1;
}

INLINE uint64_t seed_of(Py_ssize_t dim) { return ((uint64_t)dim + 1) * K_DIM; }

INLINE void fill_generic(uint64_t seed, uint64_t start, uint64_t *restrict out, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = weight_at(seed, start + (uint64_t)i);
}

/* ------------------------------------------------------------------ dot products of rows */

/* dots_<itemsize>_<isa>_<R>(p, stride, w, n, out): for the R rows at p, p + stride, ...,
 * out[k] = sum_c bits(x_k[c]) * w[c] (mod 2**64), each row n elements. Four rows at a time
 * load (and split) each weight once for all four: with a row of 4096 bf16 the weights are 32 KiB,
 * 4x the row's bytes, and reading them once per row from L2 cost more than the products. */

/* Baseline: scalar, one full 64-bit multiply per element (about 1 per cycle), which beats what
 * the compiler makes of the loop with SSE2's 32-bit multiplies. */
#define SCALAR_DOTS(NAME, R, T)                                                              \
    INLINE void NAME(const char *p, Py_ssize_t stride, const uint64_t *restrict w,           \
                     Py_ssize_t n, uint64_t *out)                                            \
    {                                                                                        \
        uint64_t acc[R] = {0};                                                               \
        for (Py_ssize_t c = 0; c < n; c++)                                                   \
            for (int k = 0; k < R; k++)                                                      \
                acc[k] += (uint64_t)((const T *)(p + k * stride))[c] * w[c];                 \
        for (int k = 0; k < R; k++)                                                          \
            out[k] = acc[k];                                                                 \
    }
#define SCALAR_DOTS_R(R)                                                                     \
    SCALAR_DOTS(dots_1_baseline_##R, R, uint8_t)                                             \
    SCALAR_DOTS(dots_2_baseline_##R, R, u16_any)                                             \
    SCALAR_DOTS(dots_4_baseline_##R, R, u32_any)                                             \
    SCALAR_DOTS(dots_8_baseline_##R, R, u64_any)
SCALAR_DOTS_R(1)
SCALAR_DOTS_R(4)
#define fill_baseline_body fill_generic

#ifdef HAVE_X86_DISPATCH
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2")))
#define AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl")))

/* Elements of up to 32 bits (x < 2**32): with w = lo + hi * 2**32,
 *   sum x*w = sum x*lo + (sum x*hi) << 32   (mod 2**64),
 * and both sums are of 32x32->64 products (vpmuludq reads the low 32 bits of each 64-bit lane,
 * so w's low half needs no masking and its high half one shift). The tail is scalar. */
#define VEC_NARROW_DOTS(...) VEC_NARROW_DOTS_(__VA_ARGS__) /* expands the *_OPS lists */
#define VEC_NARROW_DOTS_(NAME, R, ATTR, VEC, LANES, SIZE, LOADX, LOADW, MUL, ADD, SRL, SLL,   \
                         ZERO, HSUM, T)                                                      \
    ATTR INLINE void NAME(const char *p, Py_ssize_t stride, const uint64_t *restrict w,      \
                          Py_ssize_t n, uint64_t *out)                                       \
    {                                                                                        \
        VEC lo[R], hi[R];                                                                    \
        for (int k = 0; k < R; k++)                                                          \
            lo[k] = hi[k] = ZERO();                                                          \
        Py_ssize_t c = 0;                                                                    \
        for (; c + LANES <= n; c += LANES) {                                                 \
            VEC wl = LOADW(w + c), wh = SRL(wl, 32);                                         \
            for (int k = 0; k < R; k++) {                                                    \
                VEC x = LOADX(p + k * stride + c * SIZE);                                    \
                lo[k] = ADD(lo[k], MUL(x, wl));                                              \
                hi[k] = ADD(hi[k], MUL(x, wh));                                              \
            }                                                                                \
        }                                                                                    \
        for (int k = 0; k < R; k++) {                                                        \
            uint64_t acc = HSUM(ADD(lo[k], SLL(hi[k], 32)));                                 \
            const T *x = (const T *)(p + k * stride);                                        \
            for (Py_ssize_t t = c; t < n; t++)                                               \
                acc += (uint64_t)x[t] * w[t];                                                \
            out[k] = acc;                                                                    \
        }                                                                                    \
    }

/* 64-bit elements: MUL64(x, w) is the low 64 bits of each lane's product. */
#define VEC_WIDE_DOTS(...) VEC_WIDE_DOTS_(__VA_ARGS__)
#define VEC_WIDE_DOTS_(NAME, R, ATTR, VEC, LANES, LOADW, MUL64, ADD, ZERO, HSUM)               \
    ATTR INLINE void NAME(const char *p, Py_ssize_t stride, const uint64_t *restrict w,      \
                          Py_ssize_t n, uint64_t *out)                                       \
    {                                                                                        \
        VEC acc[R];                                                                          \
        for (int k = 0; k < R; k++)                                                          \
            acc[k] = ZERO();                                                                 \
        Py_ssize_t c = 0;                                                                    \
        for (; c + LANES <= n; c += LANES) {                                                 \
            VEC wv = LOADW(w + c);                                                           \
            for (int k = 0; k < R; k++)                                                      \
                acc[k] = ADD(acc[k], MUL64(LOADW((const u64_any *)(p + k * stride) + c), wv)); \
        }                                                                                    \
        for (int k = 0; k < R; k++) {                                                        \
            uint64_t s = HSUM(acc[k]);                                                       \
            const u64_any *x = (const u64_any *)(p + k * stride);                            \
            for (Py_ssize_t t = c; t < n; t++)                                               \
                s += x[t] * w[t];                                                            \
            out[k] = s;                                                                      \
        }                                                                                    \
    }

AVX2 INLINE uint64_t hsum_avx2(__m256i v)
{
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return (uint64_t)_mm_cvtsi128_si64(_mm_add_epi64(s, _mm_unpackhi_epi64(s, s)));
}
/* AVX2 has no 64-bit multiply: with x = xl + xh * 2**32, x*w = xl*wl + (xl*wh + xh*wl) << 32. */
AVX2 INLINE __m256i mul64_avx2(__m256i x, __m256i w)
{
    __m256i mid = _mm256_add_epi64(_mm256_mul_epu32(x, _mm256_srli_epi64(w, 32)),
                                   _mm256_mul_epu32(_mm256_srli_epi64(x, 32), w));
    return _mm256_add_epi64(_mm256_mul_epu32(x, w), _mm256_slli_epi64(mid, 32));
}
AVX2 INLINE uint32_t load32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
#define LOADW_AVX2(q) _mm256_loadu_si256((const __m256i *)(q))
#define X1_AVX2(q) _mm256_cvtepu8_epi64(_mm_cvtsi32_si128((int)load32(q)))
#define X2_AVX2(q) _mm256_cvtepu16_epi64(_mm_loadl_epi64((const __m128i *)(q)))
#define X4_AVX2(q) _mm256_cvtepu32_epi64(_mm_loadu_si128((const __m128i *)(q)))
#define AVX2_OPS _mm256_mul_epu32, _mm256_add_epi64, _mm256_srli_epi64, _mm256_slli_epi64,     \
                 _mm256_setzero_si256, hsum_avx2
#define AVX2_DOTS_R(R)                                                                       \
    VEC_NARROW_DOTS(dots_1_avx2_##R, R, AVX2, __m256i, 4, 1, X1_AVX2, LOADW_AVX2, AVX2_OPS, uint8_t) \
    VEC_NARROW_DOTS(dots_2_avx2_##R, R, AVX2, __m256i, 4, 2, X2_AVX2, LOADW_AVX2, AVX2_OPS, u16_any) \
    VEC_NARROW_DOTS(dots_4_avx2_##R, R, AVX2, __m256i, 4, 4, X4_AVX2, LOADW_AVX2, AVX2_OPS, u32_any) \
    VEC_WIDE_DOTS(dots_8_avx2_##R, R, AVX2, __m256i, 4, LOADW_AVX2, mul64_avx2,              \
                  _mm256_add_epi64, _mm256_setzero_si256, hsum_avx2)
AVX2_DOTS_R(1)
AVX2_DOTS_R(4)
#define fill_avx2_body fill_generic

#define LOADW_AVX512(q) _mm512_loadu_si512((const void *)(q))
#define X1_AVX512(q) _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)(q)))
#define X2_AVX512(q) _mm512_cvtepu16_epi64(_mm_loadu_si128((const __m128i *)(q)))
#define X4_AVX512(q) _mm512_cvtepu32_epi64(_mm256_loadu_si256((const __m256i *)(q)))
#define AVX512_OPS _mm512_mul_epu32, _mm512_add_epi64, _mm512_srli_epi64, _mm512_slli_epi64,   \
                   _mm512_setzero_si512, (uint64_t)_mm512_reduce_add_epi64
/* 64-bit elements: AVX-512DQ's full 64-bit multiply (vpmullq). */
#define AVX512_DOTS_R(R)                                                                     \
    VEC_NARROW_DOTS(dots_1_avx512_##R, R, AVX512, __m512i, 8, 1, X1_AVX512, LOADW_AVX512,    \
                    AVX512_OPS, uint8_t)                                                     \
    VEC_NARROW_DOTS(dots_2_avx512_##R, R, AVX512, __m512i, 8, 2, X2_AVX512, LOADW_AVX512,    \
                    AVX512_OPS, u16_any)                                                     \
    VEC_NARROW_DOTS(dots_4_avx512_##R, R, AVX512, __m512i, 8, 4, X4_AVX512, LOADW_AVX512,    \
                    AVX512_OPS, u32_any)                                                     \
    VEC_WIDE_DOTS(dots_8_avx512_##R, R, AVX512, __m512i, 8, LOADW_AVX512, _mm512_mullo_epi64, \
                  _mm512_add_epi64, _mm512_setzero_si512, (uint64_t)_mm512_reduce_add_epi64)
AVX512_DOTS_R(1)
AVX512_DOTS_R(4)
#define fill_avx512_body fill_generic /* the compiler vectorises it with vpmullq */
#endif

/* ------------------------------------------------------------------ whole calls */

typedef struct {
    const char *base;               /* the first element */
    int ndim;                       /* >= 1 */
    const Py_ssize_t *shape, *strides;
    Py_ssize_t itemsize;            /* 1, 2, 4 or 8; strides[ndim-1] == itemsize or shape[ndim-1] <= 1 */
    const uint64_t *w;              /* shape[ndim-1] weights */
    uint64_t *out;                  /* prod(shape[:ndim-1]) results, C order */
} RowsJob;

/* Rows up to this long run one at a time: their weights stay in L1 anyway, and one sequential
 * stream reads memory faster than four short interleaved ones (measured: 256-element bf16 rows
 * took 2.5x as long four at a time). */
#ifndef FOUR_ROWS_MIN_COLS
#define FOUR_ROWS_MIN_COLS 2048
#endif

/* Every row in C order: the innermost leading axis four rows at a time when rows are long, an
 * odometer over the axes before it moving a pointer by their strides. */
#define ROWS_LOOP(J, DOTS1, DOTS4)                                                           \
    do {                                                                                     \
        const Py_ssize_t cols = (J)->shape[(J)->ndim - 1];                                   \
        if ((J)->ndim == 1) {                                                                \
            DOTS1((J)->base, 0, (J)->w, cols, (J)->out);                                     \
            break;                                                                           \
        }                                                                                    \
        const int inner = (J)->ndim - 2;                                                     \
        const Py_ssize_t m = (J)->shape[inner], s = (J)->strides[inner];                     \
        Py_ssize_t idx[PyBUF_MAX_NDIM] = {0};                                                \
        const char *p = (J)->base;                                                           \
        uint64_t *o = (J)->out;                                                              \
        for (;;) {                                                                           \
            Py_ssize_t i = 0;                                                                \
            for (; cols >= FOUR_ROWS_MIN_COLS && i + 4 <= m; i += 4)                         \
                DOTS4(p + i * s, s, (J)->w, cols, o + i);                                    \
            for (; i < m; i++)                                                               \
                DOTS1(p + i * s, 0, (J)->w, cols, o + i);                                    \
            o += m;                                                                          \
            int d = inner - 1;                                                               \
            for (; d >= 0; d--) {                                                            \
                p += (J)->strides[d];                                                        \
                if (++idx[d] < (J)->shape[d])                                                \
                    break;                                                                   \
                p -= (J)->strides[d] * (J)->shape[d];                                        \
                idx[d] = 0;                                                                  \
            }                                                                                \
            if (d < 0)                                                                       \
                break;                                                                       \
        }                                                                                    \
    } while (0)

/* A 1-d line against its own weights, generated in blocks that stay in L1. */
#define LINE_BLOCK 512
#define LINE_LOOP(DOTS1, FILL)                                                               \
    for (Py_ssize_t i = 0; i < n; i += LINE_BLOCK) {                                         \
        Py_ssize_t m = n - i < LINE_BLOCK ? n - i : LINE_BLOCK;                              \
        uint64_t part;                                                                       \
        FILL(seed, start + (uint64_t)i, w, m);                                               \
        DOTS1(p + i * itemsize, 0, w, m, &part);                                             \
        acc += part;                                                                         \
    }

/* One instance of every call per instruction set: the always-inline bodies are compiled
 * inside each with that set's instructions. */
typedef struct {
    const char *name;
    void (*rows)(const RowsJob *);
    uint64_t (*line)(const char *, Py_ssize_t, Py_ssize_t, uint64_t, uint64_t);
    void (*fill)(uint64_t, uint64_t, uint64_t *, Py_ssize_t);
} Isa;

#define ISA_KERNELS(S, ATTR)                                                                 \
    ATTR static void rows_##S(const RowsJob *j)                                              \
    {                                                                                        \
        switch (j->itemsize) {                                                               \
        case 1: ROWS_LOOP(j, dots_1_##S##_1, dots_1_##S##_4); break;                         \
        case 2: ROWS_LOOP(j, dots_2_##S##_1, dots_2_##S##_4); break;                         \
        case 4: ROWS_LOOP(j, dots_4_##S##_1, dots_4_##S##_4); break;                         \
        default: ROWS_LOOP(j, dots_8_##S##_1, dots_8_##S##_4); break;                        \
        }                                                                                    \
    }                                                                                        \
    ATTR static uint64_t line_##S(const char *p, Py_ssize_t itemsize, Py_ssize_t n,          \
                                  uint64_t seed, uint64_t start)                             \
    {                                                                                        \
        uint64_t w[LINE_BLOCK] ALIGN64;                                                      \
        uint64_t acc = 0;                                                                    \
        switch (itemsize) {                                                                  \
        case 1: LINE_LOOP(dots_1_##S##_1, fill_##S##_body); break;                           \
        case 2: LINE_LOOP(dots_2_##S##_1, fill_##S##_body); break;                           \
        case 4: LINE_LOOP(dots_4_##S##_1, fill_##S##_body); break;                           \
        default: LINE_LOOP(dots_8_##S##_1, fill_##S##_body); break;                          \
        }                                                                                    \
        return acc;                                                                          \
    }                                                                                        \
    ATTR static void fill_##S(uint64_t seed, uint64_t start, uint64_t *out, Py_ssize_t n)    \
    {                                                                                        \
        fill_##S##_body(seed, start, out, n);                                                \
    }

ISA_KERNELS(baseline, )
#ifdef HAVE_X86_DISPATCH
ISA_KERNELS(avx2, AVX2)
ISA_KERNELS(avx512, AVX512)
#endif

/* Best first; ``supported`` says which of them this CPU runs (set at import). */
static const Isa all_isas[] = {
#ifdef HAVE_X86_DISPATCH
    {"avx512", rows_avx512, line_avx512, fill_avx512},
    {"avx2", rows_avx2, line_avx2, fill_avx2},
#endif
    {"baseline", rows_baseline, line_baseline, fill_baseline},
};
#define N_ISAS ((int)(sizeof(all_isas) / sizeof(all_isas[0])))
static int supported[N_ISAS]; /* set at import */

static int isa_supported(int i)
{
#ifdef HAVE_X86_DISPATCH
    __builtin_cpu_init();
    if (strcmp(all_isas[i].name, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    if (strcmp(all_isas[i].name, "avx2") == 0)
        return __builtin_cpu_supports("avx2");
#endif
    (void)i;
    return 1;
}

/* The ISA a call names (None: the best this CPU supports); NULL with an exception set. */
static const Isa *pick_isa(const char *name)
{
    for (int i = 0; i < N_ISAS; i++)
        if (supported[i] && (name == NULL || strcmp(all_isas[i].name, name) == 0))
            return &all_isas[i];
    PyErr_Format(PyExc_ValueError, "instruction set %s is not one this CPU runs", name);
    return NULL;
}

/* pick_isa, for the entry points that take a dimension number: also checks it. */
static const Isa *pick_isa_for_dim(const char *name, Py_ssize_t dim)
{
    if (dim < 0) {
        PyErr_Format(PyExc_ValueError, "dim must be >= 0, not %zd", dim);
        return NULL;
    }
    return pick_isa(name);
}

/* ------------------------------------------------------------------ Python entry points */

/* A C-contiguous buffer of exactly ``count`` uint64 (as bytes: 8 * count). */
static int get_u64(PyObject *obj, Py_buffer *view, Py_ssize_t count, int writable,
                   const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (view->itemsize != 8 || view->len != count * 8) {
        PyErr_Format(PyExc_ValueError, "%s must hold %zd 8-byte integers, not %zd bytes of %zd",
                     what, count, view->len, view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *contract_last(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kw[] = {"values", "w", "out", "isa", NULL};
    PyObject *values_obj, *w_obj, *out_obj;
    const char *isa_name = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|z", kw, &values_obj, &w_obj, &out_obj,
                                     &isa_name))
        return NULL;
    const Isa *isa = pick_isa(isa_name);
    if (isa == NULL)
        return NULL;
    Py_buffer v, w, out;
    if (PyObject_GetBuffer(values_obj, &v, PyBUF_RECORDS_RO) < 0)
        return NULL;
    if (v.ndim < 1 || !(v.itemsize == 1 || v.itemsize == 2 || v.itemsize == 4 || v.itemsize == 8)) {
        PyErr_Format(PyExc_ValueError, "values must have >= 1 axis of 1/2/4/8-byte elements, "
                     "not %d axes of %zd bytes", v.ndim, v.itemsize);
        PyBuffer_Release(&v);
        return NULL;
    }
    Py_ssize_t cols = v.shape[v.ndim - 1], rows = 1;
    for (int d = 0; d < v.ndim - 1; d++)
        rows *= v.shape[d];
    if (cols > 1 && v.strides[v.ndim - 1] != v.itemsize) {
        PyErr_Format(PyExc_ValueError, "the last axis of values must be contiguous (stride %zd, "
                     "elements of %zd bytes)", v.strides[v.ndim - 1], v.itemsize);
        PyBuffer_Release(&v);
        return NULL;
    }
    if (get_u64(w_obj, &w, cols, 0, "w") < 0) {
        PyBuffer_Release(&v);
        return NULL;
    }
    if (get_u64(out_obj, &out, rows, 1, "out") < 0) {
        PyBuffer_Release(&w);
        PyBuffer_Release(&v);
        return NULL;
    }
    if (rows > 0) {
        RowsJob job = {v.buf, v.ndim, v.shape, v.strides, v.itemsize, w.buf, out.buf};
        if (cols == 0)
            memset(out.buf, 0, (size_t)rows * 8);
        else {
            Py_BEGIN_ALLOW_THREADS
            isa->rows(&job);
            Py_END_ALLOW_THREADS
        }
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&w);
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

static PyObject *contract_line(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kw[] = {"values", "dim", "start", "isa", NULL};
    PyObject *values_obj;
    Py_ssize_t dim;
    unsigned long long start;
    const char *isa_name = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OnK|z", kw, &values_obj, &dim, &start,
                                     &isa_name))
        return NULL;
    const Isa *isa = pick_isa_for_dim(isa_name, dim);
    if (isa == NULL)
        return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(values_obj, &v, PyBUF_RECORDS_RO) < 0)
        return NULL;
    if (v.ndim != 1 || !(v.itemsize == 1 || v.itemsize == 2 || v.itemsize == 4 || v.itemsize == 8)
        || (v.shape[0] > 1 && v.strides[0] != v.itemsize)) {
        PyErr_Format(PyExc_ValueError, "values must be one contiguous axis of 1/2/4/8-byte "
                     "elements, not %d axes of %zd bytes", v.ndim, v.itemsize);
        PyBuffer_Release(&v);
        return NULL;
    }
    uint64_t acc;
    Py_BEGIN_ALLOW_THREADS
    acc = isa->line(v.buf, v.itemsize, v.shape[0], seed_of(dim), start);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    return PyLong_FromUnsignedLongLong(acc);
}

static PyObject *fill_weights(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kw[] = {"dim", "start", "out", "isa", NULL};
    Py_ssize_t dim;
    unsigned long long start;
    PyObject *out_obj;
    const char *isa_name = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nKO|z", kw, &dim, &start, &out_obj,
                                     &isa_name))
        return NULL;
    const Isa *isa = pick_isa_for_dim(isa_name, dim);
    if (isa == NULL)
        return NULL;
    Py_buffer out;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        return NULL;
    if (out.itemsize != 8 || out.len % 8) {
        PyErr_Format(PyExc_ValueError, "out must hold 8-byte integers, not %zd-byte items",
                     out.itemsize);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    isa->fill(seed_of(dim), start, out.buf, out.len / 8);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"contract_last", (PyCFunction)(void (*)(void))contract_last, METH_VARARGS | METH_KEYWORDS,
     "contract_last(values, w, out, isa=None): out[r] = sum_c bits(values[r, c]) * w[c] "
     "mod 2**64, r over the leading axes in C order; the last axis of values contiguous."},
    {"contract_line", (PyCFunction)(void (*)(void))contract_line, METH_VARARGS | METH_KEYWORDS,
     "contract_line(values, dim, start, isa=None) -> sum_i bits(values[i]) * T_dim[start + i] "
     "mod 2**64 for a contiguous 1-d values."},
    {"fill_weights", (PyCFunction)(void (*)(void))fill_weights, METH_VARARGS | METH_KEYWORDS,
     "fill_weights(dim, start, out, isa=None): out[i] = T_dim[start + i] (uint64 out)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fingerprint",
    "The O(size) step of tierpoint.kernels.fingerprint (see _fingerprint.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fingerprint(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *names = PyList_New(0); /* the instruction sets this CPU runs, best first */
    for (int i = 0; names != NULL && i < N_ISAS; i++) {
        supported[i] = isa_supported(i);
        PyObject *name = supported[i] ? PyUnicode_FromString(all_isas[i].name) : NULL;
        if (supported[i] && (name == NULL || PyList_Append(names, name) < 0))
            Py_CLEAR(names);
        Py_XDECREF(name);
    }
    PyObject *isas = names == NULL ? NULL : PyList_AsTuple(names);
    Py_XDECREF(names);
    if (isas == NULL || PyModule_AddObject(m, "ISAS", isas) < 0) {
        Py_XDECREF(isas);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
