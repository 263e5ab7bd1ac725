/* Depthwise convolution (groups == channels), NCHW float32, inference only:
 * out[n,c] = act(b[c] + sum_{ky,kx} w[c,ky,kx] * xpad[n,c, oy*S+ky, ox*S+kx]).
 *
 * Each (image, channel) plane is one OpenMP task (so batch 1 uses every core).
 * The plane is copied into a per-thread buffer with its zero padding and,
 * for stride S > 1, with its columns split into S phases (column p + S*j of
 * the padded row goes to phase p, index j): the tap (ky, kx) of output column
 * ox then reads phase kx % S at index ox + kx / S, a unit-stride access for
 * every stride. The padding cells are the same for every plane, so the buffer
 * is cleared once per thread and only the interior is copied per plane.
 * Outputs are computed in tiles of R rows x 16 columns (8 for planes at
 * most 8 wide) held in vector registers (GCC vector types: one of 16 floats
 * with AVX-512, else two of 8) over all K*K taps (K, S, R are template
 * constants, so the taps are unrolled), then bias, activation (run-time
 * bounds: one instance for every activation) and the store happen in the
 * same pass. */

/* Output tile of the fast kernels: R output rows x BW vectors (16 columns
 * in all), R * BW independent accumulators (FMA latency hiding). R is
 * IMGCLASS_DW_ROWS, or with AVX-512, for rows wider than 32 columns, twice
 * that: one 16-float vector per row needs 8 rows to keep both FMA units
 * busy. Planes of 28 x 28 and smaller measured faster with 4 (less of the
 * last tile wasted): 3.5 -> 3.1 ms for Lite0's 28 x 28 blocks. */
#define IMGCLASS_DW_ROWS 4
#define IMGCLASS_DW_BW (16 / IMGCLASS_VW)

static inline int imgclass_dw_tile_rows(int wo) {
    return IMGCLASS_VW == 16 && wo > 32 ? 2 * IMGCLASS_DW_ROWS
                                        : IMGCLASS_DW_ROWS;
}

template <int K, int S, int R, int BW, typename V>
static void imgclass_dw_plane(const float* __restrict buf, int pw,
                              const float* __restrict w, float bias,
                              float* __restrict out, int ho, int wo,
                              imgclass_bounds act) {
    const int lanes = (int)(sizeof(V) / sizeof(float));
    const long rs = (long)S * pw;  /* one padded row = S phases */
    float wk[K * K];
    for (int i = 0; i < K * K; ++i) wk[i] = w[i];
    for (int oy0 = 0; oy0 < ho; oy0 += R) {
        for (int ox0 = 0; ox0 < wo; ox0 += lanes * BW) {
            V acc[R][BW];
            for (int r = 0; r < R; ++r)
                for (int v = 0; v < BW; ++v)
                    acc[r][v] = (V){} + bias;
#pragma GCC unroll 8
            for (int ky = 0; ky < K; ++ky) {
#pragma GCC unroll 8
                for (int kx = 0; kx < K; ++kx) {
                    const float wv = wk[ky * K + kx];
                    const float* base = buf + (long)(oy0 * S + ky) * rs
                                        + (kx % S) * pw + kx / S + ox0;
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
                        for (int v = 0; v < BW; ++v)
                            acc[r][v] += wv * imgclass_load<V>(
                                base + r * S * rs + lanes * v);
                }
            }
            for (int r = 0; r < R && oy0 + r < ho; ++r) {
                float* orow = out + (long)(oy0 + r) * wo;
                for (int v = 0; v < BW; ++v)
                    imgclass_store(orow, ox0 + lanes * v, wo,
                                   imgclass_clampv(acc[r][v], act));
            }
        }
    }
}

/* Any kernel size and stride (tests, odd networks): same buffer layout. */
static void imgclass_dw_plane_generic(const float* __restrict buf, int pw,
                                      const float* __restrict w, float bias,
                                      float* __restrict out, int ho, int wo,
                                      int kh, int kw, int s,
                                      imgclass_bounds act) {
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
        for (int ox = 0; ox < wo; ++ox) orow[ox] = imgclass_clamp(orow[ox], act);
    }
}

/* Copies one image row (w floats) into a padded row of buf: s phases of
 * pw floats (column col of the padded row is phase col % s, index col / s).
 * Only the interior is written; the padding cells keep their zeros. */
static inline void imgclass_dw_fill_row(const float* __restrict src, int w,
                                        int pl, int s, int pw,
                                        float* __restrict dst) {
    if (s == 1) {  /* rows are short: vectors, not a memcpy call */
        float* d = dst + pl;
        for (int ix = 0; ix < w; ix += 8)
            imgclass_store(d, ix, w,
                           imgclass_load_clipped<imgclass_v8>(src, ix, w));
        return;
    }
    for (int p = 0; p < s; ++p) {
        /* columns col = p + s*j with 0 <= col - pl < w */
        int j0 = pl > p ? (pl - p + s - 1) / s : 0;
        int j1 = (w - 1 + pl - p) / s;  /* inclusive */
        float* d = dst + p * pw;
        const float* sp = src + p - pl;
        if (s == 2) {
#if IMGCLASS_MASKED
            /* 16 outputs from 32 inputs: one permute of two vectors;
             * masked loads and stores for the last, partial block (phase
             * rows of 7, 14 or 28 columns would otherwise be mostly the
             * scalar tail of a vectorised loop). */
            const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14,
                                                   16, 18, 20, 22, 24, 26, 28,
                                                   30);
            const int last = w - 1 + pl - p;  /* sp index of src[w - 1] */
            for (int j = j0; j <= j1; j += 16) {
                const int left = last - 2 * j + 1;  /* readable from sp+2j */
                const __mmask16 lo = left >= 16 ? 0xffff
                                                : (__mmask16)((1u << left) - 1);
                const __mmask16 hi = left >= 32 ? 0xffff
                    : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
                const __m512 a = _mm512_maskz_loadu_ps(lo, sp + 2 * j);
                const __m512 b = _mm512_maskz_loadu_ps(hi, sp + 2 * j + 16);
                const __m512 v = _mm512_permutex2var_ps(a, even, b);
                const int n = j1 - j + 1;
                _mm512_mask_storeu_ps(d + j, n >= 16 ? 0xffff
                                          : (__mmask16)((1u << n) - 1), v);
            }
#else  /* a constant stride: gcc vectorises the gather */
            for (int j = j0; j <= j1; ++j) d[j] = sp[2 * j];
#endif
        } else {
            for (int j = j0; j <= j1; ++j) d[j] = sp[s * j];
        }
    }
}

/* Copies plane x (h, w) into the interior of buf, rows pt... The padding
 * cells are never written, so they stay zero from the buffer's one-time
 * clearing. */
static void imgclass_dw_fill(const float* __restrict x, int h, int w,
                             int pt, int pl, int s, int pw,
                             float* __restrict buf) {
    for (int y = 0; y < h; ++y)
        imgclass_dw_fill_row(x + (long)y * w, w, pl, s, pw,
                             buf + (long)(y + pt) * s * pw);
}

template <int K, int S>
static void imgclass_dw_width(const float* buf, int pw, const float* w,
                              float bias, float* out, int ho, int wo,
                              imgclass_bounds act) {
    const int r = IMGCLASS_DW_ROWS;
    if (wo <= 8)
        imgclass_dw_plane<K, S, r, 1, imgclass_v8>(buf, pw, w, bias, out, ho,
                                                   wo, act);
    else if (imgclass_dw_tile_rows(wo) == r)
        imgclass_dw_plane<K, S, r, IMGCLASS_DW_BW, imgclass_vw>(
            buf, pw, w, bias, out, ho, wo, act);
    else
        imgclass_dw_plane<K, S, 2 * r, IMGCLASS_DW_BW, imgclass_vw>(
            buf, pw, w, bias, out, ho, wo, act);
}

/* One output plane from a filled buffer, with the kernel for its size. */
static void imgclass_dw_plane_act(const float* buf, int pw, const float* w,
                                  float bias, float* out, int ho, int wo,
                                  int kh, int kw, int s, int act) {
    const imgclass_bounds b = imgclass_act_bounds(act);
    if (kh == 3 && kw == 3 && s == 1)
        imgclass_dw_width<3, 1>(buf, pw, w, bias, out, ho, wo, b);
    else if (kh == 3 && kw == 3 && s == 2)
        imgclass_dw_width<3, 2>(buf, pw, w, bias, out, ho, wo, b);
    else if (kh == 5 && kw == 5 && s == 1)
        imgclass_dw_width<5, 1>(buf, pw, w, bias, out, ho, wo, b);
    else if (kh == 5 && kw == 5 && s == 2)
        imgclass_dw_width<5, 2>(buf, pw, w, bias, out, ho, wo, b);
    else
        imgclass_dw_plane_generic(buf, pw, w, bias, out, ho, wo, kh, kw, s, b);
}

/* Padded planes larger than this many floats (32 KB: L1 is 48 KB here) are
 * convolved in bands of output rows, each band's input rows copied to the
 * start of the buffer, so that the copy and the kernel's reads stay in L1
 * (Lite0's 112 x 112 planes: a 60 KB buffer whole; bench/README.md). */
#define IMGCLASS_DW_BAND_FLOATS (8 * 1024)

/* Padded rows the kernel reads for `rows` output rows (whole tiles). */
static inline int imgclass_dw_window_rows(int rows, int tile, int kh, int s) {
    return (((rows + tile - 1) / tile) * tile - 1) * s + kh;
}

/* Output size and buffer geometry of one padded plane: phase width pw and
 * rows cover every cell a tap of a whole output tile reads (16 columns,
 * imgclass_dw_tile_rows rows), so tiles at the edges need no bounds checks;
 * the cells past the padded image stay zero. band: output rows convolved
 * at a time (ho when the whole buffer fits IMGCLASS_DW_BAND_FLOATS). */
struct imgclass_plane_geo {
    int ho, wo, pw, rows, band;
    size_t floats;
};

static imgclass_plane_geo imgclass_plane_geometry(int h, int wd, int kh,
                                                  int kw, int s, int pt,
                                                  int pb, int pl, int pr) {
    imgclass_plane_geo g;
    g.ho = (h + pt + pb - kh) / s + 1;
    g.wo = (wd + pl + pr - kw) / s + 1;
    const int wtiles = (g.wo + 15) / 16;
    const int tile_rows = imgclass_dw_tile_rows(g.wo);
    const int htiles = (g.ho + tile_rows - 1) / tile_rows;
    g.pw = wtiles * 16 + (kw - 1) / s + 1;
    const int need = (wd + pl + pr + s - 1) / s;
    if (g.pw < need) g.pw = need;
    g.rows = (htiles * tile_rows - 1) * s + kh;
    if (g.rows < h + pt + pb) g.rows = h + pt + pb;
    g.floats = (size_t)g.rows * s * g.pw;
    const long row = (long)s * g.pw;
    g.band = tile_rows;
    while (g.band < g.ho
           && (long)imgclass_dw_window_rows(g.band + tile_rows, tile_rows,
                                            kh, s) * row
                  <= IMGCLASS_DW_BAND_FLOATS)
        g.band += tile_rows;
    if (g.floats <= IMGCLASS_DW_BAND_FLOATS || g.band > g.ho) g.band = g.ho;
    return g;
}

/* One plane x (h, w) -> out (g.ho, g.wo): copied into buf (whole, or a band
 * of output rows at a time), then the kernel. */
static void imgclass_dw_conv_plane(const float* x, int h, int w, int pt,
                                   int pl, int s, const imgclass_plane_geo& g,
                                   float* buf, const float* wk, float bias,
                                   float* out, int kh, int kw, int act) {
    if (g.band == g.ho) {
        imgclass_dw_fill(x, h, w, pt, pl, s, g.pw, buf);
        imgclass_dw_plane_act(buf, g.pw, wk, bias, out, g.ho, g.wo, kh, kw, s,
                              act);
        return;
    }
    const long row = (long)s * g.pw;
    const int tile = imgclass_dw_tile_rows(g.wo);
    for (int oy0 = 0; oy0 < g.ho; oy0 += g.band) {
        const int rows = g.ho - oy0 < g.band ? g.ho - oy0 : g.band;
        const int window = imgclass_dw_window_rows(rows, tile, kh, s);
        for (int r = 0; r < window; ++r) {
            const int y = oy0 * s + r - pt;  /* image row of padded row */
            float* dst = buf + r * row;
            if (y < 0 || y >= h)  /* padding: may hold an earlier band's row */
                memset(dst, 0, sizeof(float) * row);
            else
                imgclass_dw_fill_row(x + (long)y * w, w, pl, s, g.pw, dst);
        }
        imgclass_dw_plane_act(buf, g.pw, wk, bias, out + (long)oy0 * g.wo,
                              rows, g.wo, kh, kw, s, act);
    }
}

/* Returns 0, or -1 if a thread could not allocate its buffer. */
static int imgclass_depthwise(const float* x, const float* w, const float* b,
                              float* out, int n, int c, int h, int wd,
                              int kh, int kw, int s, int pt, int pb, int pl,
                              int pr, int act) {
    const imgclass_plane_geo g = imgclass_plane_geometry(h, wd, kh, kw, s,
                                                         pt, pb, pl, pr);
    const int ho = g.ho, wo = g.wo;
    const long planes = (long)n * c;
    int failed = 0;
#pragma omp parallel
    {
        float* buf = (float*)calloc(g.floats, sizeof(float));
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (long p = 0; p < planes; ++p) {
            if (!buf) continue;
            const int ch = (int)(p % c);
            imgclass_dw_conv_plane(x + p * h * wd, h, wd, pt, pl, s, g, buf,
                                   w + (long)ch * kh * kw, b[ch],
                                   out + p * ho * wo, kh, kw, act);
        }
        free(buf);
    }
    return failed ? -1 : 0;
}
