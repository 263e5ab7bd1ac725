/* Pointwise (1x1, stride 1, groups 1) convolution, NCHW float32, inference
 * only, as GEMM without im2col: out[n] (F x HW) = W (F x C) @ x[n] (C x HW),
 * then out = act(out + b[f]) (+ residual[n]) in one pass over the tile just
 * written, while it is still in cache.
 *
 * Each OpenMP thread takes an even share of the images' columns
 * (imgclass_share), in pieces of at most one HW tile of one image, and runs
 * single-threaded sgemm calls (the engine sets OpenBLAS to one thread).
 * The HW tile keeps the output tile near L2 size; F is split instead when
 * there are fewer (image, tile) pieces than threads (batch 1). In
 * column-major BLAS terms the row-major product is out^T = x^T W^T:
 * sgemm("N", "N", m = tile, n = F block, k = C). Two variants below: up to
 * IMGCLASS_PW_DIRECT_MAX_C input channels a direct register-tiled kernel
 * replaces the sgemm and the separate pass; for small planes of several
 * images, one sgemm per thread over the images' columns side by side. */

template <int RES>
static void imgclass_pw_epilogue(float* __restrict out, const float* __restrict res,
                                 const float* __restrict b, int fb, int m,
                                 long ld, imgclass_bounds act) {
    for (int f = 0; f < fb; ++f) {
        float* o = out + f * ld;
        const float bias = b[f];
        if (RES) {
            const float* r = res + f * ld;
            for (int i = 0; i < m; ++i) o[i] = imgclass_clamp(o[i] + bias, act) + r[i];
        } else {
            for (int i = 0; i < m; ++i) o[i] = imgclass_clamp(o[i] + bias, act);
        }
    }
}

static void imgclass_pw_epilogue_any(float* out, const float* res,
                                     const float* b, int fb, int m, long ld,
                                     int act) {
    if (res)
        imgclass_pw_epilogue<1>(out, res, b, fb, m, ld, imgclass_act_bounds(act));
    else
        imgclass_pw_epilogue<0>(out, res, b, fb, m, ld, imgclass_act_bounds(act));
}

/* Input channels up to which a 1x1 convolution is computed directly, in
 * register tiles, rather than with sgemm. For small C OpenBLAS spends about
 * as long packing each tile as multiplying it: on Lite0's fused expansions
 * (C = 16 to 112) the direct kernel takes 9-28% less time, at C = 192 the
 * same (bench/README.md). */
#define IMGCLASS_PW_DIRECT_MAX_C 128

/* FB output channels x PV vectors of columns, held in registers over all C
 * inputs (FB * PV accumulators; each input row loaded once for the FB
 * channels), then bias, activation, residual and a store clipped at m. */
template <int FB, int PV, int RES>
static inline void imgclass_pw_tile(const float* __restrict x, long ldx,
                                    int c, const float* __restrict w,
                                    const float* __restrict b,
                                    const float* __restrict res,
                                    float* __restrict out, long ld, int m,
                                    int col, imgclass_bounds act) {
    imgclass_vw acc[FB][PV];
    for (int j = 0; j < FB; ++j)
        for (int v = 0; v < PV; ++v)
            acc[j][v] = (imgclass_vw){} + b[j];
    for (int ci = 0; ci < c; ++ci) {
        const float* xr = x + ci * ldx;
        imgclass_vw xv[PV];
        for (int v = 0; v < PV; ++v)
            xv[v] = imgclass_load<imgclass_vw>(xr + IMGCLASS_VW * v);
#pragma GCC unroll 4
        for (int j = 0; j < FB; ++j) {
            const float wv = w[j * c + ci];
            for (int v = 0; v < PV; ++v) acc[j][v] += wv * xv[v];
        }
    }
    for (int j = 0; j < FB; ++j)
        for (int v = 0; v < PV; ++v) {
            const int at = col + IMGCLASS_VW * v;
            imgclass_vw y = imgclass_clampv(acc[j][v], act);
            if (RES)
                y += imgclass_load_clipped<imgclass_vw>(res + j * ld, at, m);
            imgclass_store(out + j * ld, at, m, y);
        }
}

/* All nb output channels of the columns [col, col + PV vectors). */
template <int PV, int RES>
static inline void imgclass_pw_columns(const float* x, long ldx, int c,
                                       const float* w, const float* b,
                                       const float* res, int nb, float* out,
                                       long ld, int m, int col,
                                       imgclass_bounds act) {
    int j = 0;
    for (; j + 4 <= nb; j += 4)
        imgclass_pw_tile<4, PV, RES>(x, ldx, c, w + (long)j * c, b + j,
                                     RES ? res + j * ld : res, out + j * ld,
                                     ld, m, col, act);
    for (; j < nb; ++j)
        imgclass_pw_tile<1, PV, RES>(x, ldx, c, w + (long)j * c, b + j,
                                     RES ? res + j * ld : res, out + j * ld,
                                     ld, m, col, act);
}

/* out (nb x m, rows ld apart) = act(W (nb x C) @ x (C x m, rows ldx apart)
 * + b) [+ res, laid out as out], for C up to IMGCLASS_PW_DIRECT_MAX_C:
 * tiles of 3 vectors of columns, then single vectors, then the last partial
 * vector from a zero-padded copy (so no load reaches past x). */
template <int RES>
static void imgclass_pw_direct(const float* __restrict x, long ldx, int c,
                               int m, const float* __restrict w,
                               const float* __restrict b,
                               const float* __restrict res, int nb,
                               float* __restrict out, long ld,
                               imgclass_bounds act) {
    int col = 0;
    for (; col + 3 * IMGCLASS_VW <= m; col += 3 * IMGCLASS_VW)
        imgclass_pw_columns<3, RES>(x + col, ldx, c, w, b, res, nb, out, ld,
                                    m, col, act);
    for (; col + IMGCLASS_VW <= m; col += IMGCLASS_VW)
        imgclass_pw_columns<1, RES>(x + col, ldx, c, w, b, res, nb, out, ld,
                                    m, col, act);
    if (col < m) {
        float tail[IMGCLASS_PW_DIRECT_MAX_C * IMGCLASS_VW];
        memset(tail, 0, sizeof(float) * c * IMGCLASS_VW);
        for (int ci = 0; ci < c; ++ci)
            memcpy(tail + ci * IMGCLASS_VW, x + ci * ldx + col,
                   sizeof(float) * (m - col));
        imgclass_pw_columns<1, RES>(tail, IMGCLASS_VW, c, w, b, res, nb, out,
                                    ld, m, col, act);
    }
}

/* The direct kernel with the activation and residual chosen at run time
 * (res may be NULL). */
static void imgclass_pw_direct_any(const float* x, long ldx, int c, int m,
                                   const float* w, const float* b,
                                   const float* res, int nb, float* out,
                                   long ld, int act) {
    const imgclass_bounds bounds = imgclass_act_bounds(act);
    if (res)
        imgclass_pw_direct<1>(x, ldx, c, m, w, b, res, nb, out, ld, bounds);
    else
        imgclass_pw_direct<0>(x, ldx, c, m, w, b, res, nb, out, ld, bounds);
}

/* Output floats per task: the tile of F x HW written by one sgemm call. */
#ifndef IMGCLASS_PW_TILE_FLOATS
#define IMGCLASS_PW_TILE_FLOATS (64 * 1024)
#endif

/* Planes of up to this many pixels (Lite0's 7 x 7) are multiplied with the
 * images side by side: one sgemm per thread over all of their columns,
 * rather than one per image that repacks the whole weight matrix for 49
 * columns (Lite0's 1152 -> 320 and 320 -> 1280 at 19 images: 3.5 -> 2.6-2.7
 * and 4.0 -> 3.0 ms). At 14 x 14 it measured slower. */
#ifndef IMGCLASS_PW_GATHER_MAX_HW
#define IMGCLASS_PW_GATHER_MAX_HW 64
#endif

/* out[i, f] = act(og[f, i*hw .. (i+1)*hw) + b[f]) [+ res[i, f]]. */
template <int RES>
static void imgclass_pw_scatter(const float* __restrict og, long cols,
                                const float* __restrict b,
                                const float* __restrict res,
                                float* __restrict out, int n, int f, int hw,
                                imgclass_bounds act) {
#pragma omp for schedule(static)
    for (long t = 0; t < (long)n * f; ++t) {
        const int img = (int)(t / f), fo = (int)(t % f);
        const float* src = og + fo * cols + (long)img * hw;
        float* dst = out + t * hw;
        const float bias = b[fo];
        if (RES) {
            const float* r = res + t * hw;
            for (int i = 0; i < hw; ++i)
                dst[i] = imgclass_clamp(src[i] + bias, act) + r[i];
        } else {
            for (int i = 0; i < hw; ++i) dst[i] = imgclass_clamp(src[i] + bias, act);
        }
    }
}

/* og (F x N*hw) = W (F x C) @ the images' columns side by side, gathered
 * first into xg (C x N*hw); one sgemm for each of `parts` shares of the
 * columns. Called inside a parallel region: the loops are shared out among
 * its threads. */
static void imgclass_gathered_product(const float* x, const float* w, int n,
                                      int c, int hw, int f, int parts,
                                      float* xg, float* og) {
    const long cols = (long)n * hw;
    long share = (cols + parts - 1) / parts;
    share = ((share + 15) / 16) * 16;
#pragma omp for schedule(static)
    for (long t = 0; t < (long)c * n; ++t) {
        const int ci = (int)(t / n), img = (int)(t % n);
        memcpy(xg + ci * cols + (long)img * hw,
               x + ((long)img * c + ci) * hw, sizeof(float) * hw);
    }
#pragma omp for schedule(static)
    for (int part = 0; part < parts; ++part) {
        const long col0 = part * share;
        if (col0 < cols) {
            int m = (int)(cols - col0 < share ? cols - col0 : share);
            int ff = f, cc = c, ld = (int)cols;
            const float one = 1.f, zero = 0.f;
            char no = 'N';
            sgemm_(&no, &no, &m, &ff, &cc, &one, xg + col0, &ld, (float*)w,
                   &cc, &zero, og + col0, &ld);
        }
    }
}

/* Whether a 1x1 product over n images of hw pixels and c inputs goes
 * through the gathered product (the pointwise op and the fused expansion). */
static inline int imgclass_pw_gathers(int n, int c, int hw) {
    return n > 1 && hw <= IMGCLASS_PW_GATHER_MAX_HW
           && c > IMGCLASS_PW_DIRECT_MAX_C;
}

/* The gathered product's buffers for n images of hw pixels: *xg (C x N*hw)
 * and *og (F x N*hw). 0, or -1 with neither allocated. */
static int imgclass_gathered_buffers(int n, int c, int hw, int f, float** xg,
                                     float** og) {
    const long cols = (long)n * hw;
    *xg = (float*)malloc(sizeof(float) * c * cols);
    *og = (float*)malloc(sizeof(float) * f * cols);
    if (*xg && *og) return 0;
    free(*xg);
    free(*og);
    return -1;
}

/* The gathered product, then bias, activation and residual on the way
 * back to NCHW. Returns -1, having done nothing, if the buffers cannot be
 * allocated. */
static int imgclass_pointwise_gathered(const float* x, const float* w,
                                       const float* b, const float* res,
                                       float* out, int n, int c, int hw,
                                       int f, int act) {
    const long cols = (long)n * hw;
    float *xg, *og;
    if (imgclass_gathered_buffers(n, c, hw, f, &xg, &og) != 0) return -1;
    const int parts = IMGCLASS_MAX_THREADS();
#pragma omp parallel
    {
        imgclass_gathered_product(x, w, n, c, hw, f, parts, xg, og);
        if (res)
            imgclass_pw_scatter<1>(og, cols, b, res, out, n, f, hw,
                                   imgclass_act_bounds(act));
        else
            imgclass_pw_scatter<0>(og, cols, b, res, out, n, f, hw,
                                   imgclass_act_bounds(act));
    }
    free(xg);
    free(og);
    return 0;
}

static void imgclass_pointwise(const float* x, const float* w, const float* b,
                               const float* res, float* out, int n, int c,
                               int hw, int f, int act) {
    if (imgclass_pw_gathers(n, c, hw)
            && imgclass_pointwise_gathered(x, w, b, res, out, n, c, hw, f,
                                           act) == 0)
        return;
    int tile = IMGCLASS_PW_TILE_FLOATS / f;
    tile = tile < 64 ? 64 : (tile / 16) * 16;
    if (tile >= hw) tile = hw;
    /* Fewer (image, tile) pieces than threads (batch 1 at 7 x 7 or 14 x 14):
     * F is split instead, so that each thread multiplies all the columns
     * by part of the weights rather than repacking all of them. */
    const int threads = IMGCLASS_MAX_THREADS();
    const long cols = (long)n * hw;
    const int fblock = (long)n * ((hw + tile - 1) / tile) < threads
                           ? imgclass_block16(f, threads) : f;
    const int fblocks = (f + fblock - 1) / fblock;
    const float one = 1.f, zero = 0.f;
    char no = 'N';
#pragma omp parallel
    {
        /* an even share of the (F block, image, column) space, in pieces of
         * up to `tile` columns of one image */
        long q, end;
        imgclass_share(fblocks * cols, &q, &end);
        while (q < end) {
            const int fi = (int)(q / cols);
            const int img = (int)(q % cols / hw), col = (int)(q % cols % hw);
            int m = hw - col < tile ? hw - col : tile;
            if (m > end - q) m = (int)(end - q);
            q += m;
            const int f0 = fi * fblock;
            int fb = f - f0 < fblock ? f - f0 : fblock;
            const int ld = hw;
            const long at = (long)img * f * hw + (long)f0 * hw + col;
            const float* xt = x + (long)img * c * hw + col;
            float* ot = out + at;
            const float* rt = res ? res + at : NULL;
            if (c <= IMGCLASS_PW_DIRECT_MAX_C) {
                imgclass_pw_direct_any(xt, hw, c, m, w + (long)f0 * c, b + f0,
                                       rt, fb, ot, hw, act);
                continue;
            }
            int cc = c, ldw = c;
            sgemm_(&no, &no, &m, &fb, &cc, &one, (float*)xt, (int*)&ld,
                   (float*)(w + (long)f0 * c), &ldw, &zero, ot, (int*)&ld);
            imgclass_pw_epilogue_any(ot, rt, b + f0, fb, m, hw, act);
        }
    }
}
