/* Pointwise (1x1, stride 1, groups 1) convolution, NCHW float32, inference
 * only, as GEMM without im2col: out[n] (F x HW) = W (F x C) @ x[n] (C x HW),
 * then out = act(out + b[f]) (+ residual[n]) in one pass over the tile just
 * written, while it is still in cache.
 *
 * Work is split into tasks of (image, HW tile, F block); each OpenMP thread
 * runs single-threaded sgemm calls (the engine sets OpenBLAS to one thread).
 * The HW tile keeps the output tile near L2 size; F is split as well when
 * there are fewer (image, tile) tasks than threads (batch 1 at 7x7). In
 * column-major BLAS terms the row-major product is out^T = x^T W^T:
 * sgemm("N", "N", m = tile, n = F block, k = C). */

template <int ACT, int RES>
static void imgclass_pw_epilogue(float* __restrict out, const float* __restrict res,
                                 const float* __restrict b, int fb, int m,
                                 long ld) {
    for (int f = 0; f < fb; ++f) {
        float* o = out + f * ld;
        const float bias = b[f];
        if (RES) {
            const float* r = res + f * ld;
            for (int i = 0; i < m; ++i) o[i] = imgclass_act<ACT>(o[i] + bias) + r[i];
        } else {
            for (int i = 0; i < m; ++i) o[i] = imgclass_act<ACT>(o[i] + bias);
        }
    }
}

static void imgclass_pw_epilogue_any(float* out, const float* res,
                                     const float* b, int fb, int m, long ld,
                                     int act) {
    if (res) {
        if (act == IMGCLASS_ACT_RELU6) imgclass_pw_epilogue<IMGCLASS_ACT_RELU6, 1>(out, res, b, fb, m, ld);
        else if (act == IMGCLASS_ACT_RELU) imgclass_pw_epilogue<IMGCLASS_ACT_RELU, 1>(out, res, b, fb, m, ld);
        else imgclass_pw_epilogue<IMGCLASS_ACT_IDENTITY, 1>(out, res, b, fb, m, ld);
    } else {
        if (act == IMGCLASS_ACT_RELU6) imgclass_pw_epilogue<IMGCLASS_ACT_RELU6, 0>(out, res, b, fb, m, ld);
        else if (act == IMGCLASS_ACT_RELU) imgclass_pw_epilogue<IMGCLASS_ACT_RELU, 0>(out, res, b, fb, m, ld);
        else imgclass_pw_epilogue<IMGCLASS_ACT_IDENTITY, 0>(out, res, b, fb, m, ld);
    }
}

/* Output floats per task: the tile of F x HW written by one sgemm call. */
#ifndef IMGCLASS_PW_TILE_FLOATS
#define IMGCLASS_PW_TILE_FLOATS (64 * 1024)
#endif

static void imgclass_pointwise(const float* x, const float* w, const float* b,
                               const float* res, float* out, int n, int c,
                               int hw, int f, int act) {
    int tile = IMGCLASS_PW_TILE_FLOATS / f;
    tile = tile < 64 ? 64 : (tile / 16) * 16;
    if (tile >= hw) tile = hw;
    const int tiles = (hw + tile - 1) / tile;
    const int threads = IMGCLASS_MAX_THREADS();
    int fblocks = 1;
    if ((long)n * tiles < threads) {
        fblocks = (threads + n * tiles - 1) / (n * tiles);
    }
    int fblock = (f + fblocks - 1) / fblocks;
    fblock = ((fblock + 15) / 16) * 16;
    if (fblock > f) fblock = f;
    fblocks = (f + fblock - 1) / fblock;
    const long tasks = (long)n * tiles * fblocks;
    const float one = 1.f, zero = 0.f;
    char no = 'N';
#pragma omp parallel for schedule(static)
    for (long t = 0; t < tasks; ++t) {
        const int img = (int)(t / ((long)tiles * fblocks));
        const int rest = (int)(t % ((long)tiles * fblocks));
        const int ti = rest / fblocks, fi = rest % fblocks;
        int m = hw - ti * tile;
        if (m > tile) m = tile;
        const int f0 = fi * fblock;
        int fb = f - f0;
        if (fb > fblock) fb = fblock;
        const int ld = hw;
        const float* xt = x + (long)img * c * hw + (long)ti * tile;
        float* ot = out + (long)img * f * hw + (long)f0 * hw + (long)ti * tile;
        const float* rt = res ? res + (long)img * f * hw + (long)f0 * hw
                                    + (long)ti * tile : NULL;
        int cc = c, ldw = c;
        sgemm_(&no, &no, &m, &fb, &cc, &one, (float*)xt, (int*)&ld,
               (float*)(w + (long)f0 * c), &ldw, &zero, ot, (int*)&ld);
        imgclass_pw_epilogue_any(ot, rt, b + f0, fb, m, hw, act);
    }
}
