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
