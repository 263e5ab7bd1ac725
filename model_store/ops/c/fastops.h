/* Shared by the imgclass Theano ops (model_store/ops): activations applied in
 * the output pass. ACT is a compile-time constant in every kernel, so gcc
 * turns these into vmaxps/vminps inside vectorised loops. */
#ifndef IMGCLASS_FASTOPS_H
#define IMGCLASS_FASTOPS_H

#include <stdlib.h>
#include <string.h>

#define IMGCLASS_ACT_IDENTITY 0
#define IMGCLASS_ACT_RELU 1
#define IMGCLASS_ACT_RELU6 2

template <int ACT>
static inline float imgclass_act(float v) {
    if (ACT == IMGCLASS_ACT_RELU) return v > 0.f ? v : 0.f;
    if (ACT == IMGCLASS_ACT_RELU6) {
        v = v > 0.f ? v : 0.f;
        return v < 6.f ? v : 6.f;
    }
    return v;
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

/* Stores v at row[col..col+lanes), clipped at the row's width wo (the last
 * tile of a row may reach past it). */
template <typename V>
static inline void imgclass_store(float* row, int col, int wo, V v) {
    const int lanes = (int)(sizeof v / sizeof(float));
    if (col + lanes <= wo)
        memcpy(row + col, &v, sizeof v);
    else if (col < wo)
        memcpy(row + col, &v, sizeof(float) * (wo - col));
}

/* Loads row[col..col+lanes), the lanes at or past wo as zeros. */
template <typename V>
static inline V imgclass_load_clipped(const float* row, int col, int wo) {
    const int lanes = (int)(sizeof(V) / sizeof(float));
    if (col + lanes <= wo) return imgclass_load<V>(row + col);
    V v = {};
    if (col < wo) memcpy(&v, row + col, sizeof(float) * (wo - col));
    return v;
}

template <int ACT, typename V>
static inline V imgclass_actv(V v) {
    const V zero = {};
    const V six = zero + 6.f;
    if (ACT != IMGCLASS_ACT_IDENTITY) v = v > zero ? v : zero;
    if (ACT == IMGCLASS_ACT_RELU6) v = v < six ? v : six;
    return v;
}

/* Whether a is a 4-D array of exactly dims. */
static int imgclass_has_dims(PyArrayObject* a, const npy_intp* dims) {
    return PyArray_NDIM(a) == 4 && PyArray_DIMS(a)[0] == dims[0]
        && PyArray_DIMS(a)[1] == dims[1] && PyArray_DIMS(a)[2] == dims[2]
        && PyArray_DIMS(a)[3] == dims[3];
}

/* Makes *out a C-contiguous float32 array of dims, keeping the one Theano
 * passes in when it already is one. 0, or -1 with a Python error set. */
static int imgclass_output(PyArrayObject** out, const npy_intp* dims) {
    if (*out && PyArray_IS_C_CONTIGUOUS(*out)
            && PyArray_TYPE(*out) == NPY_FLOAT32
            && imgclass_has_dims(*out, dims))
        return 0;
    Py_XDECREF(*out);
    *out = (PyArrayObject*)PyArray_EMPTY(4, (npy_intp*)dims, NPY_FLOAT32, 0);
    return *out ? 0 : -1;
}

#ifdef _OPENMP
#include <omp.h>
#define IMGCLASS_MAX_THREADS() omp_get_max_threads()
#else
#define IMGCLASS_MAX_THREADS() 1
#endif

#endif
