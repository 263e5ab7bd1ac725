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

#ifdef _OPENMP
#include <omp.h>
#define IMGCLASS_MAX_THREADS() omp_get_max_threads()
#else
#define IMGCLASS_MAX_THREADS() 1
#endif

#endif
