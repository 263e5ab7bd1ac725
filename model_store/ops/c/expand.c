/* An MBConv block's expansion and depthwise convolution as one op, NCHW
 * float32, inference only:
 *   e   = act_e(We @ x + be)            1x1, C -> F channels
 *   out = act_d(depthwise(e, Wd) + bd)  k x k, stride s, zero padding
 *
 * Work is split into tasks of (image, block of F channels). A task computes
 * its block of expanded planes into a per-thread buffer sized for L2, with
 * bias and activation in the same pass: directly, in register tiles, for up
 * to IMGCLASS_EX_DIRECT_MAX_C input channels, else with one sgemm and
 * pointwise.c's epilogue. It then runs depthwise.c's plane kernel on each
 * of them. The expanded tensor, the
 * largest in the block (Lite0's first one is 96 x 112 x 112, 4.8 MB per
 * image), is never written to memory as a whole nor read back. */

/* Expanded floats per task: the block of channels a thread keeps in cache. */
#ifndef IMGCLASS_EX_BLOCK_FLOATS
#define IMGCLASS_EX_BLOCK_FLOATS (256 * 1024)
#endif

/* Channels per task: the block size, in multiples of 8, reduced so that
 * every thread has a task when there are few images. */
static int imgclass_ex_block(int n, int f, int hw) {
    int fb = IMGCLASS_EX_BLOCK_FLOATS / hw;
    fb = fb < 8 ? 8 : (fb / 8) * 8;
    const int threads = IMGCLASS_MAX_THREADS();
    const int per_image = (threads + n - 1) / n;  /* tasks wanted per image */
    if (per_image > 1) {
        int even = (f + per_image - 1) / per_image;
        even = ((even + 7) / 8) * 8;
        if (even < fb) fb = even;
    }
    return fb > f ? f : fb;
}

/* Input channels up to which the expansion is computed directly rather than
 * with sgemm. For small C OpenBLAS spends about as long packing each tile as
 * multiplying it: on Lite0's blocks (C = 16 to 112) the direct kernel takes
 * 9-28% less time, at C = 192 the same (bench/README.md). */
#define IMGCLASS_EX_DIRECT_MAX_C 128

/* FB expanded channels x PV vectors of columns, held in registers over all C
 * inputs (FB * PV accumulators; each input row loaded once for the FB
 * channels), then bias, activation and a store clipped at hw. */
template <int FB, int PV, int ACT>
static inline void imgclass_ex_tile(const float* __restrict x, long ldx,
                                    int c, const float* __restrict we,
                                    const float* __restrict be,
                                    float* __restrict e, int hw, int col) {
    imgclass_vw acc[FB][PV];
    for (int j = 0; j < FB; ++j)
        for (int v = 0; v < PV; ++v)
            acc[j][v] = (imgclass_vw){} + be[j];
    for (int ci = 0; ci < c; ++ci) {
        const float* xr = x + ci * ldx;
        imgclass_vw xv[PV];
        for (int v = 0; v < PV; ++v)
            xv[v] = imgclass_load<imgclass_vw>(xr + IMGCLASS_VW * v);
#pragma GCC unroll 4
        for (int j = 0; j < FB; ++j) {
            const float wv = we[j * c + ci];
            for (int v = 0; v < PV; ++v) acc[j][v] += wv * xv[v];
        }
    }
    for (int j = 0; j < FB; ++j)
        for (int v = 0; v < PV; ++v)
            imgclass_store(e + (long)j * hw, col + IMGCLASS_VW * v, hw,
                           imgclass_actv<ACT>(acc[j][v]));
}

/* All nb expanded channels of the columns [col, col + PV vectors). */
template <int PV, int ACT>
static inline void imgclass_ex_columns(const float* x, long ldx, int c,
                                       const float* we, const float* be,
                                       int nb, float* e, int hw, int col) {
    int j = 0;
    for (; j + 4 <= nb; j += 4)
        imgclass_ex_tile<4, PV, ACT>(x, ldx, c, we + (long)j * c, be + j,
                                     e + (long)j * hw, hw, col);
    for (; j < nb; ++j)
        imgclass_ex_tile<1, PV, ACT>(x, ldx, c, we + (long)j * c, be + j,
                                     e + (long)j * hw, hw, col);
}

/* e (nb x hw) = act(We (nb x C) @ x (C x hw) + be), for C up to
 * IMGCLASS_EX_DIRECT_MAX_C: tiles of 3 vectors of columns, then single
 * vectors, then the last partial vector from a zero-padded copy (so no load
 * reaches past x). */
template <int ACT>
static void imgclass_ex_direct(const float* __restrict x, int c, int hw,
                               const float* __restrict we,
                               const float* __restrict be, int nb,
                               float* __restrict e) {
    int col = 0;
    for (; col + 3 * IMGCLASS_VW <= hw; col += 3 * IMGCLASS_VW)
        imgclass_ex_columns<3, ACT>(x + col, hw, c, we, be, nb, e, hw, col);
    for (; col + IMGCLASS_VW <= hw; col += IMGCLASS_VW)
        imgclass_ex_columns<1, ACT>(x + col, hw, c, we, be, nb, e, hw, col);
    if (col < hw) {
        float tail[IMGCLASS_EX_DIRECT_MAX_C * IMGCLASS_VW] = {0};
        for (int ci = 0; ci < c; ++ci)
            memcpy(tail + ci * IMGCLASS_VW, x + (long)ci * hw + col,
                   sizeof(float) * (hw - col));
        imgclass_ex_columns<1, ACT>(tail, IMGCLASS_VW, c, we, be, nb, e, hw,
                                    col);
    }
}

static void imgclass_ex_direct_any(const float* x, int c, int hw,
                                   const float* we, const float* be, int nb,
                                   float* e, int act) {
    if (act == IMGCLASS_ACT_RELU6) imgclass_ex_direct<IMGCLASS_ACT_RELU6>(x, c, hw, we, be, nb, e);
    else if (act == IMGCLASS_ACT_RELU) imgclass_ex_direct<IMGCLASS_ACT_RELU>(x, c, hw, we, be, nb, e);
    else imgclass_ex_direct<IMGCLASS_ACT_IDENTITY>(x, c, hw, we, be, nb, e);
}

/* Returns 0, or -1 if a thread could not allocate its buffers. */
static int imgclass_expand_depthwise(const float* x, const float* we,
                                     const float* be, const float* wd,
                                     const float* bd, float* out, int n,
                                     int c, int f, int h, int w, int kh,
                                     int kw, int s, int pt, int pb, int pl,
                                     int pr, int act_e, int act_d) {
    const imgclass_plane_geo g = imgclass_plane_geometry(h, w, kh, kw, s,
                                                         pt, pb, pl, pr);
    int hw = h * w;
    const int fb = imgclass_ex_block(n, f, hw);
    const int blocks = (f + fb - 1) / fb;
    const long tasks = (long)n * blocks;
    const long plane_out = (long)g.ho * g.wo;
    int failed = 0;
#pragma omp parallel
    {
        float* expanded = (float*)malloc((size_t)fb * hw * sizeof(float));
        float* buf = (float*)calloc(g.floats, sizeof(float));
        if (!expanded || !buf) {
#pragma omp atomic write
            failed = 1;
        }
        const float one = 1.f, zero = 0.f;
        char no = 'N';
#pragma omp for schedule(static)
        for (long t = 0; t < tasks; ++t) {
            if (!expanded || !buf) continue;
            const int img = (int)(t / blocks);
            const int f0 = (int)(t % blocks) * fb;
            int nb = f - f0 < fb ? f - f0 : fb;
            const float* xi = x + (long)img * c * hw;
            if (c <= IMGCLASS_EX_DIRECT_MAX_C) {
                imgclass_ex_direct_any(xi, c, hw, we + (long)f0 * c, be + f0,
                                       nb, expanded, act_e);
            } else {
                int cc = c, ldw = c;
                /* Row-major e (nb x hw) = We[f0:f0+nb] (nb x C) @ x (C x hw):
                 * in BLAS's column-major terms e^T = x^T We^T. */
                sgemm_(&no, &no, &hw, &nb, &cc, &one, (float*)xi, &hw,
                       (float*)(we + (long)f0 * c), &ldw, &zero, expanded,
                       &hw);
                imgclass_pw_epilogue_any(expanded, NULL, be + f0, nb, hw, hw,
                                         act_e);
            }
            for (int j = 0; j < nb; ++j) {
                const int ch = f0 + j;
                imgclass_dw_fill(expanded + (long)j * hw, h, w, pt, pl, s,
                                 g.pw, buf);
                imgclass_dw_plane_act(buf, g.pw, wd + (long)ch * kh * kw,
                                      bd[ch],
                                      out + ((long)img * f + ch) * plane_out,
                                      g.ho, g.wo, kh, kw, s, act_d);
            }
        }
        free(expanded);
        free(buf);
    }
    return failed ? -1 : 0;
}
