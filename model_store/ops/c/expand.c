/* An MBConv block's expansion and depthwise convolution as one op, NCHW
 * float32, inference only:
 *   e   = act_e(We @ x + be)            1x1, C -> F channels
 *   out = act_d(depthwise(e, Wd) + bd)  k x k, stride s, zero padding
 *
 * Each thread takes an even share of the (image, channel) planes, in blocks
 * of channels of one image (imgclass_share). A block's expanded planes are
 * computed into a per-thread buffer sized for L2, with
 * bias and activation in the same pass (pointwise.c: directly in register
 * tiles for up to IMGCLASS_PW_DIRECT_MAX_C input channels, else one sgemm
 * and the epilogue), then runs depthwise.c's plane kernel on each of them.
 * The expanded tensor, the largest in the block (Lite0's first one is
 * 96 x 112 x 112, 4.8 MB per image), is never written to memory as a whole
 * nor read back. */

/* Expanded floats per task: the block of channels a thread keeps in cache. */
#ifndef IMGCLASS_EX_BLOCK_FLOATS
#define IMGCLASS_EX_BLOCK_FLOATS (256 * 1024)
#endif

/* Channels per block: the block size in multiples of 8, at most f. */
static int imgclass_ex_block(int f, int hw) {
    int fb = IMGCLASS_EX_BLOCK_FLOATS / hw;
    fb = fb < 8 ? 8 : (fb / 8) * 8;
    return fb > f ? f : fb;
}

/* Small planes (7 x 7) of many inputs, several images: the expansion as
 * pointwise.c's gathered product (one sgemm per thread over all the images'
 * columns, instead of one per image that repacks the weights: Lite0's
 * 192 -> 1152 at 7 x 7), bias and activation over it, then the depthwise
 * convolution of each (image, channel) plane. Returns 1, having done
 * nothing, if its buffers cannot be allocated; 0, or -1 if a thread could
 * not allocate its plane buffer. */
static int imgclass_expand_depthwise_gathered(
        const float* x, const float* we, const float* be, const float* wd,
        const float* bd, float* out, int n, int c, int f, int h, int w,
        int kh, int kw, int s, int pt, int pl, int act_e, int act_d,
        const imgclass_plane_geo& g) {
    const int hw = h * w;
    const long cols = (long)n * hw;
    float *xg, *og;
    if (imgclass_gathered_buffers(n, c, hw, f, &xg, &og) != 0) return 1;
    const int parts = IMGCLASS_MAX_THREADS();
    const long plane_out = (long)g.ho * g.wo;
    int failed = 0;
#pragma omp parallel
    {
        imgclass_gathered_product(x, we, n, c, hw, f, parts, xg, og);
#pragma omp for schedule(static)
        for (int f0 = 0; f0 < f; f0 += 16)
            imgclass_pw_epilogue_any(og + f0 * cols, NULL, be + f0,
                                     f - f0 < 16 ? f - f0 : 16, (int)cols,
                                     cols, act_e);
        float* buf = (float*)calloc(g.floats, sizeof(float));
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (long t = 0; t < (long)n * f; ++t) {
            if (!buf) continue;
            const int img = (int)(t / f), ch = (int)(t % f);
            imgclass_dw_conv_plane(og + ch * cols + (long)img * hw, h, w, pt,
                                   pl, s, g, buf, wd + (long)ch * kh * kw,
                                   bd[ch], out + t * plane_out, kh, kw, act_d);
        }
        free(buf);
    }
    free(xg);
    free(og);
    return failed ? -1 : 0;
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
    if (imgclass_pw_gathers(n, c, hw)) {
        const int done = imgclass_expand_depthwise_gathered(
            x, we, be, wd, bd, out, n, c, f, h, w, kh, kw, s, pt, pl, act_e,
            act_d, g);
        if (done != 1) return done;
    }
    const int fb = imgclass_ex_block(f, hw);
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
        /* an even share of the n * f planes, in blocks of up to fb
         * channels of one image */
        long p, end;
        imgclass_share(expanded && buf ? (long)n * f : 0, &p, &end);
        while (p < end) {
            const int img = (int)(p / f), f0 = (int)(p % f);
            int nb = f - f0 < fb ? f - f0 : fb;
            if (nb > end - p) nb = (int)(end - p);
            p += nb;
            const float* xi = x + (long)img * c * hw;
            if (c <= IMGCLASS_PW_DIRECT_MAX_C) {
                imgclass_pw_direct_any(xi, hw, c, hw, we + (long)f0 * c,
                                       be + f0, NULL, nb, expanded, hw, act_e);
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
                imgclass_dw_conv_plane(expanded + (long)j * hw, h, w, pt, pl,
                                       s, g, buf, wd + (long)ch * kh * kw,
                                       bd[ch],
                                       out + ((long)img * f + ch) * plane_out,
                                       kh, kw, act_d);
            }
        }
        free(expanded);
        free(buf);
    }
    return failed ? -1 : 0;
}
