/* Depthwise convolution (groups == channels), NCHW float32, inference only:
 * out[n,c] = act(b[c] + sum_{ky,kx} w[c,ky,kx] * xpad[n,c, oy*S+ky, ox*S+kx]).
 *
 * Each (image, channel) plane is one OpenMP task (so batch 1 uses every core).
 * The plane is first copied into a per-thread buffer with its zero padding and,
 * for stride S > 1, with its columns split into S phases (column p + S*j of
 * the padded row goes to phase p, index j): the tap (ky, kx) of output column
 * ox then reads phase kx % S at index ox + kx / S, a unit-stride access for
 * every stride. Output rows are computed BLOCK columns at a time with all
 * K*K taps accumulated in registers (K, S, ACT are template constants so gcc
 * unrolls the taps and vectorises the block), then bias, activation and the
 * store happen in the same pass. */

#define IMGCLASS_DW_BLOCK 16

template <int K, int S, int ACT>
static void imgclass_dw_plane(const float* __restrict buf, int pw,
                              const float* __restrict w, float bias,
                              float* __restrict out, int ho, int wo) {
    const int row_stride = S * pw;  /* one padded row = S phases */
    for (int oy = 0; oy < ho; ++oy) {
        const float* rows = buf + (long)(oy * S) * row_stride;
        float* orow = out + (long)oy * wo;
        for (int ox0 = 0; ox0 < wo; ox0 += IMGCLASS_DW_BLOCK) {
            float acc[IMGCLASS_DW_BLOCK];
            for (int i = 0; i < IMGCLASS_DW_BLOCK; ++i) acc[i] = bias;
#pragma GCC unroll 8
            for (int ky = 0; ky < K; ++ky) {
                const float* row = rows + (long)ky * row_stride;
#pragma GCC unroll 8
                for (int kx = 0; kx < K; ++kx) {
                    const float* src = row + (kx % S) * pw + kx / S + ox0;
                    const float wv = w[ky * K + kx];
                    for (int i = 0; i < IMGCLASS_DW_BLOCK; ++i)
                        acc[i] += wv * src[i];
                }
            }
            const int n = wo - ox0 < IMGCLASS_DW_BLOCK ? wo - ox0
                                                       : IMGCLASS_DW_BLOCK;
            if (n == IMGCLASS_DW_BLOCK) {
                for (int i = 0; i < IMGCLASS_DW_BLOCK; ++i)
                    orow[ox0 + i] = imgclass_act<ACT>(acc[i]);
            } else {
                for (int i = 0; i < n; ++i)
                    orow[ox0 + i] = imgclass_act<ACT>(acc[i]);
            }
        }
    }
}

/* Any kernel size and stride (tests, odd networks): same buffer layout. */
template <int ACT>
static void imgclass_dw_plane_generic(const float* __restrict buf, int pw,
                                      const float* __restrict w, float bias,
                                      float* __restrict out, int ho, int wo,
                                      int kh, int kw, int s) {
    const int row_stride = s * pw;
    for (int oy = 0; oy < ho; ++oy) {
        float* orow = out + (long)oy * wo;
        for (int ox = 0; ox < wo; ++ox) orow[ox] = bias;
        for (int ky = 0; ky < kh; ++ky) {
            const float* row = buf + (long)(oy * s + ky) * row_stride;
            for (int kx = 0; kx < kw; ++kx) {
                const float* src = row + (kx % s) * pw + kx / s;
                const float wv = w[ky * kw + kx];
                for (int ox = 0; ox < wo; ++ox) orow[ox] += wv * src[ox];
            }
        }
        for (int ox = 0; ox < wo; ++ox) orow[ox] = imgclass_act<ACT>(orow[ox]);
    }
}

/* Copies plane x (h, w) into buf: (h + pt + pb) padded rows of s phases of
 * pw floats each, zeros outside the image. */
static void imgclass_dw_fill(const float* __restrict x, int h, int w,
                             int pt, int pb, int pl, int s, int pw,
                             float* __restrict buf) {
    const int rows = h + pt + pb;
    memset(buf, 0, sizeof(float) * (size_t)rows * s * pw);
    for (int y = 0; y < h; ++y) {
        float* dst = buf + (long)(y + pt) * s * pw;
        const float* src = x + (long)y * w;
        if (s == 1) {
            memcpy(dst + pl, src, sizeof(float) * w);
        } else {
            for (int ix = 0; ix < w; ++ix) {
                const int col = ix + pl;
                dst[(col % s) * pw + col / s] = src[ix];
            }
        }
    }
}

template <int ACT>
static void imgclass_dw_dispatch(const float* buf, int pw, const float* w,
                                 float bias, float* out, int ho, int wo,
                                 int kh, int kw, int s) {
    if (kh == 3 && kw == 3 && s == 1)
        imgclass_dw_plane<3, 1, ACT>(buf, pw, w, bias, out, ho, wo);
    else if (kh == 3 && kw == 3 && s == 2)
        imgclass_dw_plane<3, 2, ACT>(buf, pw, w, bias, out, ho, wo);
    else if (kh == 5 && kw == 5 && s == 1)
        imgclass_dw_plane<5, 1, ACT>(buf, pw, w, bias, out, ho, wo);
    else if (kh == 5 && kw == 5 && s == 2)
        imgclass_dw_plane<5, 2, ACT>(buf, pw, w, bias, out, ho, wo);
    else
        imgclass_dw_plane_generic<ACT>(buf, pw, w, bias, out, ho, wo,
                                       kh, kw, s);
}

/* Returns 0, or -1 if a thread could not allocate its buffer. */
static int imgclass_depthwise(const float* x, const float* w, const float* b,
                              float* out, int n, int c, int h, int wd,
                              int kh, int kw, int s, int pt, int pb, int pl,
                              int pr, int act) {
    const int ho = (h + pt + pb - kh) / s + 1;
    const int wo = (wd + pl + pr - kw) / s + 1;
    /* Phase width: every index a tap reads, rounded up to whole blocks. */
    const int blocks = (wo + IMGCLASS_DW_BLOCK - 1) / IMGCLASS_DW_BLOCK;
    int pw = blocks * IMGCLASS_DW_BLOCK + (kw - 1) / s + 1;
    const int need = (wd + pl + pr + s - 1) / s;
    if (pw < need) pw = need;
    const size_t buf_floats = (size_t)(h + pt + pb) * s * pw;
    const long planes = (long)n * c;
    int failed = 0;
#pragma omp parallel
    {
        float* buf = (float*)malloc(sizeof(float) * buf_floats);
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (long p = 0; p < planes; ++p) {
            if (!buf) continue;
            const int ch = (int)(p % c);
            imgclass_dw_fill(x + p * h * wd, h, wd, pt, pb, pl, s, pw, buf);
            const float* wc = w + (long)ch * kh * kw;
            float* o = out + p * ho * wo;
            if (act == IMGCLASS_ACT_RELU6)
                imgclass_dw_dispatch<IMGCLASS_ACT_RELU6>(buf, pw, wc, b[ch], o,
                                                         ho, wo, kh, kw, s);
            else if (act == IMGCLASS_ACT_RELU)
                imgclass_dw_dispatch<IMGCLASS_ACT_RELU>(buf, pw, wc, b[ch], o,
                                                        ho, wo, kh, kw, s);
            else
                imgclass_dw_dispatch<IMGCLASS_ACT_IDENTITY>(
                    buf, pw, wc, b[ch], o, ho, wo, kh, kw, s);
        }
        free(buf);
    }
    return failed ? -1 : 0;
}
