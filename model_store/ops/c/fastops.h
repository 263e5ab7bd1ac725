/* Shared by the imgclass Theano ops (model_store/ops): activations applied in
 * the output pass as run-time bounds, so each kernel has one template
 * instance for every activation (a template argument tripled them, and the
 * first compile took 40 s; bench/README.md). gcc emits vmaxps/vminps, and
 * a NaN stays NaN, as with NumPy's maximum and minimum. */
#ifndef IMGCLASS_FASTOPS_H
#define IMGCLASS_FASTOPS_H

#include <stdlib.h>
#include <string.h>

#define IMGCLASS_ACT_IDENTITY 0
#define IMGCLASS_ACT_RELU 1
#define IMGCLASS_ACT_RELU6 2

/* An activation given at run time: the output clamped to [lo, hi]. */
struct imgclass_bounds {
    float lo, hi;
};

static inline imgclass_bounds imgclass_act_bounds(int act) {
    imgclass_bounds b = {-__builtin_inff(), __builtin_inff()};
    if (act != IMGCLASS_ACT_IDENTITY) b.lo = 0.f;
    if (act == IMGCLASS_ACT_RELU6) b.hi = 6.f;
    return b;
}

static inline float imgclass_clamp(float v, imgclass_bounds b) {
    v = v < b.lo ? b.lo : v;
    return v > b.hi ? b.hi : v;
}

/* Vectors of floats (GCC vector types). */
typedef float imgclass_v8 __attribute__((vector_size(32)));

/* The widest vector -march=native offers: 16 floats with AVX-512, else 8. */
#ifdef __AVX512F__
#define IMGCLASS_VW 16
#else
#define IMGCLASS_VW 8
#endif
typedef float imgclass_vw __attribute__((vector_size(IMGCLASS_VW * 4)));

template <typename V>
static inline V imgclass_load(const float* p) {
    V v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline imgclass_v8 imgclass_load8(const float* p) {
    return imgclass_load<imgclass_v8>(p);
}

/* Partial vectors (the last tile of a short row: planes of 7 or 14
 * columns end every row with one) move with AVX-512 masked loads and stores
 * where there are some; a memcpy of a variable length would be a libc call
 * per row. */
#if defined(__AVX512F__) && defined(__AVX512VL__)
#include <immintrin.h>
#define IMGCLASS_MASKED 1
#else
#define IMGCLASS_MASKED 0
#endif

/* Stores v at row[col..col+lanes), clipped at the row's width wo (the last
 * tile of a row may reach past it). */
template <typename V>
static inline void imgclass_store(float* row, int col, int wo, V v) {
    const int lanes = (int)(sizeof v / sizeof(float));
    if (col + lanes <= wo) {
        memcpy(row + col, &v, sizeof v);
        return;
    }
    if (col >= wo) return;
    const unsigned keep = (1u << (wo - col)) - 1;
#if IMGCLASS_MASKED
    if constexpr (sizeof v == 64) {
        _mm512_mask_storeu_ps(row + col, (__mmask16)keep, (__m512)v);
        return;
    } else if constexpr (sizeof v == 32) {
        _mm256_mask_storeu_ps(row + col, (__mmask8)keep, (__m256)v);
        return;
    }
#endif
    (void)keep;
    memcpy(row + col, &v, sizeof(float) * (wo - col));
}

/* Loads row[col..col+lanes), the lanes at or past wo as zeros (never
 * reading past row[wo - 1]). */
template <typename V>
static inline V imgclass_load_clipped(const float* row, int col, int wo) {
    const int lanes = (int)(sizeof(V) / sizeof(float));
    if (col + lanes <= wo) return imgclass_load<V>(row + col);
    V v = {};
    if (col >= wo) return v;
    const unsigned keep = (1u << (wo - col)) - 1;
#if IMGCLASS_MASKED
    if constexpr (sizeof v == 64) {
        return (V)_mm512_maskz_loadu_ps((__mmask16)keep, row + col);
    } else if constexpr (sizeof v == 32) {
        return (V)_mm256_maskz_loadu_ps((__mmask8)keep, row + col);
    }
#endif
    (void)keep;
    memcpy(&v, row + col, sizeof(float) * (wo - col));
    return v;
}

/* imgclass_clamp on every lane of a vector. */
template <typename V>
static inline V imgclass_clampv(V v, imgclass_bounds b) {
    const V lo = (V){} + b.lo, hi = (V){} + b.hi;
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

/* Whether a is an nd-D array of exactly dims. */
static int imgclass_has_dims(PyArrayObject* a, const npy_intp* dims,
                             int nd = 4) {
    if (PyArray_NDIM(a) != nd) return 0;
    for (int i = 0; i < nd; ++i)
        if (PyArray_DIMS(a)[i] != dims[i]) return 0;
    return 1;
}

/* Makes *out a C-contiguous float32 array of dims (nd of them), keeping the
 * one Theano passes in when it already is one. 0, or -1 with a Python
 * error set. */
static int imgclass_output(PyArrayObject** out, const npy_intp* dims,
                           int nd = 4) {
    if (*out && PyArray_IS_C_CONTIGUOUS(*out)
            && PyArray_TYPE(*out) == NPY_FLOAT32
            && imgclass_has_dims(*out, dims, nd))
        return 0;
    Py_XDECREF(*out);
    *out = (PyArrayObject*)PyArray_EMPTY(nd, (npy_intp*)dims, NPY_FLOAT32, 0);
    return *out ? 0 : -1;
}

/* Columns per thread when n columns (or channels) are split over `parts`
 * threads: an even share rounded up to a multiple of 16 (whole vectors),
 * at most n. */
static inline int imgclass_block16(int n, int parts) {
    int block = (n + parts - 1) / parts;
    block = ((block + 15) / 16) * 16;
    return block > n ? n : block;
}

#ifdef _OPENMP
#include <omp.h>
#define IMGCLASS_MAX_THREADS() omp_get_max_threads()
#define IMGCLASS_THREAD() omp_get_thread_num()
#define IMGCLASS_TEAM() omp_get_num_threads()
#else
#define IMGCLASS_MAX_THREADS() 1
#define IMGCLASS_THREAD() 0
#define IMGCLASS_TEAM() 1
#endif

/* The calling thread's even share [*begin, *end) of units 0..total-1 in a
 * parallel region. Whole tasks per thread (an OpenMP loop) leave one
 * thread a task more when the count does not divide: Lite0's 14 x 14 and
 * 28 x 28 layers had one task per image, 10 against 9 per thread for a
 * chunk of 19 images, while the other thread waited. */
static inline void imgclass_share(long total, long* begin, long* end) {
    const int team = IMGCLASS_TEAM(), id = IMGCLASS_THREAD();
    *begin = total * id / team;
    *end = total * (id + 1) / team;
}

#endif
