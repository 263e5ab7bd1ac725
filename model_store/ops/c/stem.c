/* Dense convolution of an input with few channels (a network's RGB stem),
 * NCHW float32, inference only: out[n,f] = act(b[f] + sum_c dw(x[n,c],
 * w[f,c])). Theano's CorrMM would build an im2col copy and run a separate
 * elementwise pass for bias and activation; here each image's C planes are
 * laid out once in the padded, phase-split buffer of the depthwise kernel
 * (depthwise.c, which this file extends) and each output channel is one
 * OpenMP task that accumulates the C planes' taps in the same register
 * tiles, bias and activation applied before the only store.
 *
 * For the common kernels (3x3 and 5x5, stride 1 or 2, outputs wider than
 * 8), IMGCLASS_STEM_FB output channels are computed together: each input
 * vector loaded feeds that many filters' accumulators (8 with AVX-512, 4
 * with AVX2), so the inner loop does that many FMAs per load instead of one
 * (a load-bound loop before). Batches of at least one image per thread are
 * split by image, each thread filling its own buffer, so that no thread
 * waits while another fills. */

template <int K, int S, int BW>
static void imgclass_stem_plane(const float* __restrict buf, long plane,
                                int c, int pw, const float* __restrict w,
                                float bias, float* __restrict out, int ho,
                                int wo, imgclass_bounds act) {
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
                for (int v = 0; v < BW; ++v)
                    imgclass_store(orow, ox0 + 8 * v, wo,
                                    imgclass_clampv(acc[r][v], act));
            }
        }
    }
}

/* Any kernel size and stride: one plane at a time into the output. */
static void imgclass_stem_generic(const float* buf, long plane, int c, int pw,
                                  const float* w, float bias, float* out,
                                  int ho, int wo, int kh, int kw, int s,
                                  imgclass_bounds act) {
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
        for (int ox = 0; ox < wo; ++ox) orow[ox] = imgclass_clamp(orow[ox], act);
    }
}

template <int K, int S>
static void imgclass_stem_width(const float* buf, long plane, int c, int pw,
                                const float* w, float bias, float* out,
                                int ho, int wo, imgclass_bounds act) {
    if (wo <= 8)
        imgclass_stem_plane<K, S, 1>(buf, plane, c, pw, w, bias, out, ho, wo,
                                     act);
    else
        imgclass_stem_plane<K, S, 2>(buf, plane, c, pw, w, bias, out, ho, wo,
                                     act);
}

static void imgclass_stem_dispatch(const float* buf, long plane, int c,
                                   int pw, const float* w, float bias,
                                   float* out, int ho, int wo, int kh, int kw,
                                   int s, imgclass_bounds act) {
    if (kh == 3 && kw == 3 && s == 1)
        imgclass_stem_width<3, 1>(buf, plane, c, pw, w, bias, out, ho, wo, act);
    else if (kh == 3 && kw == 3 && s == 2)
        imgclass_stem_width<3, 2>(buf, plane, c, pw, w, bias, out, ho, wo, act);
    else if (kh == 5 && kw == 5 && s == 1)
        imgclass_stem_width<5, 1>(buf, plane, c, pw, w, bias, out, ho, wo, act);
    else if (kh == 5 && kw == 5 && s == 2)
        imgclass_stem_width<5, 2>(buf, plane, c, pw, w, bias, out, ho, wo, act);
    else
        imgclass_stem_generic(buf, plane, c, pw, w, bias, out, ho, wo, kh, kw,
                              s, act);
}

/* Output channels per block of imgclass_stem_block: with a tile of 16
 * columns in BW vectors, FB x BW = 8 accumulators (16 vector registers
 * with AVX2, 32 with AVX-512, leave room for the loaded inputs). */
#define IMGCLASS_STEM_FB (IMGCLASS_VW / 2)

/* FB filters of one image over rows of 16 output columns: FB x BW
 * accumulators of the widest vectors; w holds the FB filters (c*K*K each),
 * out their FB planes (ho*wo each). Needs wo > 8 (the 16-column reads stay
 * in the padded row). */
template <int K, int S>
static void imgclass_stem_block(const float* __restrict buf, long plane,
                                int c, int pw, const float* __restrict w,
                                const float* __restrict bias,
                                float* __restrict out, int ho, int wo,
                                imgclass_bounds act) {
    const int FB = IMGCLASS_STEM_FB, BW = IMGCLASS_DW_BW,
              lanes = IMGCLASS_VW;
    const long rs = (long)S * pw;
    const long taps = (long)c * K * K;
    for (int oy = 0; oy < ho; ++oy) {
        for (int ox0 = 0; ox0 < wo; ox0 += 16) {
            imgclass_vw acc[FB][BW];
            for (int f = 0; f < FB; ++f)
                for (int v = 0; v < BW; ++v)
                    acc[f][v] = (imgclass_vw){} + bias[f];
            for (int ci = 0; ci < c; ++ci) {
                const float* row0 = buf + ci * plane + (long)oy * S * rs
                                    + ox0;
                const float* wc = w + ci * K * K;
#pragma GCC unroll 8
                for (int ky = 0; ky < K; ++ky) {
#pragma GCC unroll 8
                    for (int kx = 0; kx < K; ++kx) {
                        const float* base = row0 + (long)ky * rs
                                            + (kx % S) * pw + kx / S;
                        imgclass_vw in[BW];
                        for (int v = 0; v < BW; ++v)
                            in[v] = imgclass_load<imgclass_vw>(base
                                                               + lanes * v);
#pragma GCC unroll 8
                        for (int f = 0; f < FB; ++f) {
                            const float wv = wc[f * taps + ky * K + kx];
                            for (int v = 0; v < BW; ++v)
                                acc[f][v] += wv * in[v];
                        }
                    }
                }
            }
            for (int f = 0; f < FB; ++f) {
                float* orow = out + (long)f * ho * wo + (long)oy * wo;
                for (int v = 0; v < BW; ++v)
                    imgclass_store(orow, ox0 + lanes * v, wo,
                                   imgclass_clampv(acc[f][v], act));
            }
        }
    }
}

/* Whether imgclass_stem_block handles this geometry. */
static inline int imgclass_stem_blocked(int kh, int kw, int s, int wo) {
    return kh == kw && (kh == 3 || kh == 5) && (s == 1 || s == 2) && wo > 8;
}

static void imgclass_stem_block_dispatch(const float* buf, long plane, int c,
                                         int pw, const float* w,
                                         const float* bias, float* out,
                                         int ho, int wo, int k, int s,
                                         imgclass_bounds act) {
    if (k == 3 && s == 1)
        imgclass_stem_block<3, 1>(buf, plane, c, pw, w, bias, out, ho, wo, act);
    else if (k == 3)
        imgclass_stem_block<3, 2>(buf, plane, c, pw, w, bias, out, ho, wo, act);
    else if (s == 1)
        imgclass_stem_block<5, 1>(buf, plane, c, pw, w, bias, out, ho, wo, act);
    else
        imgclass_stem_block<5, 2>(buf, plane, c, pw, w, bias, out, ho, wo, act);
}

/* Filters [f0, f0 + count) of one image whose c planes are in buf: a block
 * of IMGCLASS_STEM_FB filters when count is that and the geometry allows,
 * else filter by filter. w, b and out start at filter 0 of the image. */
static void imgclass_stem_filters(const float* buf, long plane, int c,
                                  const float* w, const float* b, float* out,
                                  const imgclass_plane_geo* g, int kh, int kw,
                                  int s, int act, int f0, int count) {
    const long taps = (long)c * kh * kw, area = (long)g->ho * g->wo;
    const imgclass_bounds bounds = imgclass_act_bounds(act);
    if (count == IMGCLASS_STEM_FB && imgclass_stem_blocked(kh, kw, s, g->wo)) {
        imgclass_stem_block_dispatch(buf, plane, c, g->pw, w + f0 * taps,
                                     b + f0, out + f0 * area, g->ho, g->wo,
                                     kh, s, bounds);
        return;
    }
    for (int fi = f0; fi < f0 + count; ++fi)
        imgclass_stem_dispatch(buf, plane, c, g->pw, w + fi * taps, b[fi],
                               out + fi * area, g->ho, g->wo, kh, kw, s,
                               bounds);
}

/* Fills buf with the c planes of image img. */
static inline void imgclass_stem_fill(const float* x, int img, int c, int h,
                                      int wd, int pt, int pl, int s,
                                      const imgclass_plane_geo* g,
                                      float* buf) {
    for (int ci = 0; ci < c; ++ci)
        imgclass_dw_fill(x + ((long)img * c + ci) * h * wd, h, wd, pt, pl, s,
                         g->pw, buf + ci * (long)g->floats);
}

/* At least one image per thread: an image per task, each thread filling
 * its own buffer. 0, or -1 if a thread could not allocate its buffer. */
static int imgclass_stem_by_image(const float* x, const float* w,
                                  const float* b, float* out, int n, int c,
                                  int f, int h, int wd, int kh, int kw, int s,
                                  int pt, int pl, int act,
                                  const imgclass_plane_geo* g) {
    const long area = (long)g->ho * g->wo;
    const int fb = IMGCLASS_STEM_FB, blocks = (f + fb - 1) / fb;
    int failed = 0;
#pragma omp parallel
    {
        float* buf = (float*)calloc((size_t)c * g->floats, sizeof(float));
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int img = 0; img < n; ++img) {
            if (!buf) continue;
            imgclass_stem_fill(x, img, c, h, wd, pt, pl, s, g, buf);
            for (int bi = 0; bi < blocks; ++bi)
                imgclass_stem_filters(buf, (long)g->floats, c, w, b,
                                      out + (long)img * f * area, g, kh, kw,
                                      s, act, bi * fb,
                                      f - bi * fb < fb ? f - bi * fb : fb);
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

/* Fewer images than threads: one buffer per image, its filter blocks in
 * parallel. 0, or -1 if the buffer could not be allocated. */
static int imgclass_stem_by_filters(const float* x, const float* w,
                                    const float* b, float* out, int n, int c,
                                    int f, int h, int wd, int kh, int kw,
                                    int s, int pt, int pl, int act,
                                    const imgclass_plane_geo* g) {
    const long area = (long)g->ho * g->wo;
    const int fb = IMGCLASS_STEM_FB, blocks = (f + fb - 1) / fb;
    float* buf = (float*)calloc((size_t)c * g->floats, sizeof(float));
    if (!buf) return -1;
    for (int img = 0; img < n; ++img) {
        imgclass_stem_fill(x, img, c, h, wd, pt, pl, s, g, buf);
#pragma omp parallel for schedule(static)
        for (int bi = 0; bi < blocks; ++bi)
            imgclass_stem_filters(buf, (long)g->floats, c, w, b,
                                  out + (long)img * f * area, g, kh, kw, s,
                                  act, bi * fb,
                                  f - bi * fb < fb ? f - bi * fb : fb);
    }
    free(buf);
    return 0;
}

/* Returns 0, or -1 if a buffer could not be allocated. */
static int imgclass_stem(const float* x, const float* w, const float* b,
                         float* out, int n, int c, int f, int h, int wd,
                         int kh, int kw, int s, int pt, int pb, int pl,
                         int pr, int act) {
    const imgclass_plane_geo g = imgclass_plane_geometry(h, wd, kh, kw, s,
                                                         pt, pb, pl, pr);
    if (n >= IMGCLASS_MAX_THREADS())
        return imgclass_stem_by_image(x, w, b, out, n, c, f, h, wd, kh, kw,
                                      s, pt, pl, act, &g);
    return imgclass_stem_by_filters(x, w, b, out, n, c, f, h, wd, kh, kw, s,
                                    pt, pl, act, &g);
}
