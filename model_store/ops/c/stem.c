/* Dense convolution of an input with few channels (a network's RGB stem),
 * NCHW float32, inference only: out[n,f] = act(b[f] + sum_c dw(x[n,c],
 * w[f,c])). Theano's CorrMM would build an im2col copy and run a separate
 * elementwise pass for bias and activation; here each image's C planes are
 * laid out once in the padded, phase-split buffer of the depthwise kernel
 * (depthwise.c, which this file extends) and each output channel is one
 * OpenMP task that accumulates the C planes' taps in the same register
 * tiles, bias and activation applied before the only store. */

template <int K, int S, int BW, int ACT>
static void imgclass_stem_plane(const float* __restrict buf, long plane,
                                int c, int pw, const float* __restrict w,
                                float bias, float* __restrict out, int ho,
                                int wo) {
    const long rs = (long)S * pw;
    for (int oy0 = 0; oy0 < ho; oy0 += IMGCLASS_DW_ROWS) {
        for (int ox0 = 0; ox0 < wo; ox0 += 8 * BW) {
            imgclass_v8 acc[IMGCLASS_DW_ROWS][BW];
            for (int r = 0; r < IMGCLASS_DW_ROWS; ++r)
                for (int v = 0; v < BW; ++v)
                    acc[r][v] = (imgclass_v8){0, 0, 0, 0, 0, 0, 0, 0} + bias;
            for (int ci = 0; ci < c; ++ci) {
                const float* wk = w + ci * K * K;
                const float* pbuf = buf + ci * plane;
#pragma GCC unroll 8
                for (int ky = 0; ky < K; ++ky) {
#pragma GCC unroll 8
                    for (int kx = 0; kx < K; ++kx) {
                        const float wv = wk[ky * K + kx];
                        const float* base = pbuf + (long)(oy0 * S + ky) * rs
                                            + (kx % S) * pw + kx / S + ox0;
#pragma GCC unroll 4
                        for (int r = 0; r < IMGCLASS_DW_ROWS; ++r)
#pragma GCC unroll 2
                            for (int v = 0; v < BW; ++v)
                                acc[r][v] += wv * imgclass_load8(
                                    base + r * S * rs + 8 * v);
                    }
                }
            }
            for (int r = 0; r < IMGCLASS_DW_ROWS && oy0 + r < ho; ++r) {
                float* orow = out + (long)(oy0 + r) * wo;
                for (int v = 0; v < BW; ++v) {
                    const int col = ox0 + 8 * v;
                    const imgclass_v8 y = imgclass_act8<ACT>(acc[r][v]);
                    if (col + 8 <= wo)
                        memcpy(orow + col, &y, sizeof y);
                    else if (col < wo)
                        memcpy(orow + col, &y, sizeof(float) * (wo - col));
                }
            }
        }
    }
}

/* Any kernel size and stride: one plane at a time into the output. */
template <int ACT>
static void imgclass_stem_generic(const float* buf, long plane, int c, int pw,
                                  const float* w, float bias, float* out,
                                  int ho, int wo, int kh, int kw, int s) {
    const int row_stride = s * pw;
    for (int oy = 0; oy < ho; ++oy) {
        float* orow = out + (long)oy * wo;
        for (int ox = 0; ox < wo; ++ox) orow[ox] = bias;
        for (int ci = 0; ci < c; ++ci) {
            for (int ky = 0; ky < kh; ++ky) {
                const float* row = buf + ci * plane
                                   + (long)(oy * s + ky) * row_stride;
                for (int kx = 0; kx < kw; ++kx) {
                    const float* src = row + (kx % s) * pw + kx / s;
                    const float wv = w[(ci * kh + ky) * kw + kx];
                    for (int ox = 0; ox < wo; ++ox) orow[ox] += wv * src[ox];
                }
            }
        }
        for (int ox = 0; ox < wo; ++ox) orow[ox] = imgclass_act<ACT>(orow[ox]);
    }
}

template <int K, int S, int ACT>
static void imgclass_stem_width(const float* buf, long plane, int c, int pw,
                                const float* w, float bias, float* out,
                                int ho, int wo) {
    if (wo <= 8)
        imgclass_stem_plane<K, S, 1, ACT>(buf, plane, c, pw, w, bias, out,
                                          ho, wo);
    else
        imgclass_stem_plane<K, S, 2, ACT>(buf, plane, c, pw, w, bias, out,
                                          ho, wo);
}

template <int ACT>
static void imgclass_stem_dispatch(const float* buf, long plane, int c,
                                   int pw, const float* w, float bias,
                                   float* out, int ho, int wo, int kh, int kw,
                                   int s) {
    if (kh == 3 && kw == 3 && s == 1)
        imgclass_stem_width<3, 1, ACT>(buf, plane, c, pw, w, bias, out, ho, wo);
    else if (kh == 3 && kw == 3 && s == 2)
        imgclass_stem_width<3, 2, ACT>(buf, plane, c, pw, w, bias, out, ho, wo);
    else if (kh == 5 && kw == 5 && s == 1)
        imgclass_stem_width<5, 1, ACT>(buf, plane, c, pw, w, bias, out, ho, wo);
    else if (kh == 5 && kw == 5 && s == 2)
        imgclass_stem_width<5, 2, ACT>(buf, plane, c, pw, w, bias, out, ho, wo);
    else
        imgclass_stem_generic<ACT>(buf, plane, c, pw, w, bias, out, ho, wo,
                                   kh, kw, s);
}

/* Returns 0, or -1 if the buffer could not be allocated. */
static int imgclass_stem(const float* x, const float* w, const float* b,
                         float* out, int n, int c, int f, int h, int wd,
                         int kh, int kw, int s, int pt, int pb, int pl,
                         int pr, int act) {
    const imgclass_plane_geo g = imgclass_plane_geometry(h, wd, kh, kw, s,
                                                         pt, pb, pl, pr);
    const long plane = (long)g.floats;
    float* buf = (float*)calloc((size_t)c * g.floats, sizeof(float));
    if (!buf) return -1;
    for (int img = 0; img < n; ++img) {
        for (int ci = 0; ci < c; ++ci)
            imgclass_dw_fill(x + ((long)img * c + ci) * h * wd, h, wd, pt, pl,
                             s, g.pw, buf + ci * plane);
#pragma omp parallel for schedule(static)
        for (int fi = 0; fi < f; ++fi) {
            const float* wf = w + (long)fi * c * kh * kw;
            float* o = out + ((long)img * f + fi) * g.ho * g.wo;
            if (act == IMGCLASS_ACT_RELU6)
                imgclass_stem_dispatch<IMGCLASS_ACT_RELU6>(
                    buf, plane, c, g.pw, wf, b[fi], o, g.ho, g.wo, kh, kw, s);
            else if (act == IMGCLASS_ACT_RELU)
                imgclass_stem_dispatch<IMGCLASS_ACT_RELU>(
                    buf, plane, c, g.pw, wf, b[fi], o, g.ho, g.wo, kh, kw, s);
            else
                imgclass_stem_dispatch<IMGCLASS_ACT_IDENTITY>(
                    buf, plane, c, g.pw, wf, b[fi], o, g.ho, g.wo, kh, kw, s);
        }
    }
    free(buf);
    return 0;
}
