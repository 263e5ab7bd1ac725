/* Separable image resampling with the same arithmetic as Pillow's
 * Image.resize (libImaging/Resample.c) for 8-bit images, so its output is
 * identical byte for byte, at a fraction of the time: both passes run over
 * contiguous memory, which the compiler vectorises (Pillow's horizontal
 * pass gathers each output pixel's taps one by one).
 *
 * The model, as Pillow defines it: each output position i of an axis
 * samples the source around center = in0 + (i + 0.5) * scale with the
 * filter stretched by max(scale, 1); the weights are normalised to sum 1,
 * then rounded to integers with 22 fractional bits. A pixel is
 * (2^21 + sum(sample * weight)) >> 22, clamped to 0..255. The horizontal
 * pass runs first, over the source rows the vertical pass needs, and its
 * result is rounded to 8 bits before the vertical pass.
 *
 * Here the horizontal pass runs over the transposed region (source columns
 * as rows), so that it is a sum of whole rows scaled by one weight, like
 * the vertical pass. Pixels are `elem` bytes (1 for "L", 4 for Pillow's
 * RGBX storage of "RGB"); the output is planar: `out_channels` planes of
 * out_h x out_w bytes.
 *
 * Compiled with -ffp-contract=off: fused multiply-adds would round the
 * sample positions differently from Pillow's build, and change weights.
 * Built as a Python module by model_store/resample.py, which puts
 * `#define IMGCLASS_RS_MODULE <name>` before this file.
 */

#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define IMGCLASS_RS_BITS 22
#define IMGCLASS_RS_HALF (1 << (IMGCLASS_RS_BITS - 1))
/* Source rows the horizontal pass transposes at a time. */
#define RS_BAND 64

enum { RS_BOX = 0, RS_BILINEAR = 1, RS_HAMMING = 2, RS_BICUBIC = 3, RS_LANCZOS = 4 };

static double rs_sinc(double x)
{
    if (x == 0.0)
        return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double rs_filter(int filter, double x)
{
    switch (filter) {
    case RS_BOX:
        return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0;
    case RS_BILINEAR:
        x = fabs(x);
        return x < 1.0 ? 1.0 - x : 0.0;
    case RS_HAMMING:
        x = fabs(x);
        if (x == 0.0)
            return 1.0;
        if (x >= 1.0)
            return 0.0;
        x = x * M_PI;
        /* Pillow writes these two constants as floats. */
        return sin(x) / x * ((double)0.54f + (double)0.46f * cos(x));
    case RS_BICUBIC:
        /* a = -0.5 */
        x = fabs(x);
        if (x < 1.0)
            return (1.5 * x - 2.5) * x * x + 1;
        if (x < 2.0)
            return (((x - 5) * x + 8) * x - 4) * -0.5;
        return 0.0;
    default: /* RS_LANCZOS */
        return (-3.0 <= x && x < 3.0) ? rs_sinc(x) * rs_sinc(x / 3) : 0.0;
    }
}

static double rs_support(int filter)
{
    static const double supports[] = {0.5, 1.0, 1.0, 2.0, 3.0};
    return supports[filter];
}

/* One axis: for output i, `count[i]` source positions from `first[i]`,
 * weighted by weights[i * ksize + k]. */
typedef struct {
    int ksize;
    int *first;
    int *count;
    int *weights;
} rs_axis;

static void rs_axis_free(rs_axis *axis)
{
    free(axis->first);
    free(axis->count);
    free(axis->weights);
}

static int rs_axis_init(rs_axis *axis, int in_size, float in0, float in1,
                        int out_size, int filter)
{
    double scale = (double)(in1 - in0) / out_size;
    double stretch = scale < 1.0 ? 1.0 : scale;
    double support = rs_support(filter) * stretch;
    int ksize = (int)ceil(support) * 2 + 1;
    double *w = (double *)malloc(sizeof(double) * ksize);
    axis->ksize = ksize;
    axis->first = (int *)malloc(sizeof(int) * out_size);
    axis->count = (int *)malloc(sizeof(int) * out_size);
    axis->weights = (int *)calloc((size_t)out_size * ksize, sizeof(int));
    if (!w || !axis->first || !axis->count || !axis->weights) {
        free(w);
        rs_axis_free(axis);
        return 0;
    }
    for (int i = 0; i < out_size; i++) {
        double center = in0 + (i + 0.5) * scale;
        double inv = 1.0 / stretch;
        int lo = (int)(center - support + 0.5);
        int hi = (int)(center + support + 0.5);
        if (lo < 0)
            lo = 0;
        if (hi > in_size)
            hi = in_size;
        int n = hi > lo ? hi - lo : 0;
        double total = 0.0;
        for (int k = 0; k < n; k++) {
            w[k] = rs_filter(filter, (k + lo - center + 0.5) * inv);
            total += w[k];
        }
        for (int k = 0; k < n; k++) {
            double v = total != 0.0 ? w[k] / total : w[k];
            axis->weights[(size_t)i * ksize + k] =
                (int)(v < 0 ? -0.5 + v * (1 << IMGCLASS_RS_BITS)
                            : 0.5 + v * (1 << IMGCLASS_RS_BITS));
        }
        axis->first[i] = lo;
        axis->count[i] = n;
    }
    free(w);
    return 1;
}

static inline unsigned char rs_clip(int acc)
{
    int v = acc >> IMGCLASS_RS_BITS;
    return (unsigned char)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* dst[c][r] = src[r][c] for a rows x cols matrix of `elem`-byte pixels;
 * src rows are `src_stride` bytes apart. In tiles, so both sides stay in
 * cache; 4-byte pixels in 4x4 blocks of SSE2 registers. */
static void rs_transpose(unsigned char *dst, const unsigned char *src,
                         int rows, int cols, size_t src_stride, int elem)
{
    const int tile = 16;
    size_t dst_stride = (size_t)rows * elem;
    for (int r0 = 0; r0 < rows; r0 += tile) {
        int r1 = r0 + tile < rows ? r0 + tile : rows;
        for (int c0 = 0; c0 < cols; c0 += tile) {
            int c1 = c0 + tile < cols ? c0 + tile : cols;
            int c = c0, r;
#ifdef __SSE2__
            if (elem == 4 && r1 - r0 == tile) {
                for (; c + 4 <= c1; c += 4) {
                    for (r = r0; r < r1; r += 4) {
                        const unsigned char *s0 = src + r * src_stride + c * 4;
                        __m128i a = _mm_loadu_si128((const __m128i *)s0);
                        __m128i b = _mm_loadu_si128((const __m128i *)(s0 + src_stride));
                        __m128i e = _mm_loadu_si128((const __m128i *)(s0 + 2 * src_stride));
                        __m128i f = _mm_loadu_si128((const __m128i *)(s0 + 3 * src_stride));
                        __m128i ab_lo = _mm_unpacklo_epi32(a, b), ab_hi = _mm_unpackhi_epi32(a, b);
                        __m128i ef_lo = _mm_unpacklo_epi32(e, f), ef_hi = _mm_unpackhi_epi32(e, f);
                        unsigned char *d = dst + c * dst_stride + r * 4;
                        _mm_storeu_si128((__m128i *)d, _mm_unpacklo_epi64(ab_lo, ef_lo));
                        _mm_storeu_si128((__m128i *)(d + dst_stride), _mm_unpackhi_epi64(ab_lo, ef_lo));
                        _mm_storeu_si128((__m128i *)(d + 2 * dst_stride), _mm_unpacklo_epi64(ab_hi, ef_hi));
                        _mm_storeu_si128((__m128i *)(d + 3 * dst_stride), _mm_unpackhi_epi64(ab_hi, ef_hi));
                    }
                }
            }
#endif
            for (; c < c1; c++) {
                unsigned char *d = dst + c * dst_stride;
                if (elem == 4) {
                    for (r = r0; r < r1; r++)
                        memcpy(d + r * 4, src + r * src_stride + c * 4, 4);
                } else {
                    for (r = r0; r < r1; r++)
                        d[r] = src[r * src_stride + c];
                }
            }
        }
    }
}

/* One pass over rows of `len` bytes: row i of the output is the clipped
 * weighted sum of rows first[i] - shift ... of `in`. Output rows go to
 * `out` (when `planes` is 0) or are split into `planes` planes of
 * `plane_len` bytes (output rows of `len / elem` pixels, channel c of
 * each pixel to plane c). */
static void rs_pass(const rs_axis *axis, int out_size, int shift,
                    const unsigned char *in, size_t in_stride, int len,
                    int *acc, unsigned char *out, size_t out_stride,
                    int elem, int planes, size_t plane_len)
{
    for (int i = 0; i < out_size; i++) {
        const int *w = axis->weights + (size_t)i * axis->ksize;
        const unsigned char *base =
            in + (size_t)(axis->first[i] - shift) * in_stride;
        for (int j = 0; j < len; j++)
            acc[j] = IMGCLASS_RS_HALF;
        for (int k = 0; k < axis->count[i]; k++) {
            const unsigned char *row = base + (size_t)k * in_stride;
            const int wk = w[k];
            for (int j = 0; j < len; j++)
                acc[j] += row[j] * wk;
        }
        if (!planes) {
            unsigned char *o = out + (size_t)i * out_stride;
            for (int j = 0; j < len; j++)
                o[j] = rs_clip(acc[j]);
        } else {
            int pixels = len / elem;
            for (int c = 0; c < planes; c++) {
                unsigned char *o = out + c * plane_len + (size_t)i * pixels;
                for (int p = 0; p < pixels; p++)
                    o[p] = rs_clip(acc[p * elem + c]);
            }
        }
    }
}

/* Resamples the box (x0, y0, x1, y1) of an in_h x in_w image of `elem`-byte
 * pixels to out_h x out_w, into `channels` planes. Returns 0 when out of
 * memory. */
static int imgclass_resample(const unsigned char *src, int in_h, int in_w,
                             int elem, const float box[4], int out_h,
                             int out_w, int filter, int channels,
                             unsigned char *out)
{
    rs_axis horizontal = {0}, vertical = {0};
    unsigned char *columns = NULL, *rows_t = NULL, *rows = NULL;
    int *acc = NULL, ok = 0;
    size_t plane = (size_t)out_h * out_w;
    int need_h = out_w != in_w || box[0] != 0 || box[2] != out_w;
    int need_v = out_h != in_h || box[1] != 0 || box[3] != out_h;
    if (!rs_axis_init(&vertical, in_h, box[1], box[3], out_h, filter))
        return 0;
    /* The source rows the vertical pass reads. */
    int y_lo = vertical.first[0];
    int y_hi = vertical.first[out_h - 1] + vertical.count[out_h - 1];
    int n_rows = y_hi - y_lo;
    const unsigned char *v_in = src;
    size_t v_stride = (size_t)in_w * elem;
    int v_shift = 0;
    if (need_h) {
        if (!rs_axis_init(&horizontal, in_w, box[0], box[2], out_w, filter))
            goto done;
        int x_lo = horizontal.first[0];
        int x_hi = horizontal.first[out_w - 1] + horizontal.count[out_w - 1];
        int n_cols = x_hi - x_lo;
        int band = n_rows < RS_BAND ? n_rows : RS_BAND;
        size_t band_len = (size_t)band * elem;
        columns = (unsigned char *)malloc((size_t)n_cols * band_len + 1);
        rows_t = (unsigned char *)malloc((size_t)out_w * band_len + 1);
        rows = (unsigned char *)malloc((size_t)n_rows * out_w * elem + 1);
        acc = (int *)malloc(sizeof(int) * ((size_t)out_w * elem + band_len + 1));
        if (!columns || !rows_t || !rows || !acc)
            goto done;
        /* In bands of rows: the transposed band stays in cache, and the
         * extra memory is a band, not a copy of the image. */
        for (int b0 = 0; b0 < n_rows; b0 += band) {
            int rows_in_band = n_rows - b0 < band ? n_rows - b0 : band;
            int len = rows_in_band * elem;
            rs_transpose(columns, src + (size_t)(y_lo + b0) * v_stride
                         + (size_t)x_lo * elem, rows_in_band, n_cols, v_stride, elem);
            rs_pass(&horizontal, out_w, x_lo, columns, len, len, acc, rows_t, len,
                    elem, 0, 0);
            rs_transpose(rows + (size_t)b0 * out_w * elem, rows_t, out_w,
                         rows_in_band, len, elem);
        }
        v_in = rows;
        v_stride = (size_t)out_w * elem;
        v_shift = y_lo;
    } else {
        acc = (int *)malloc(sizeof(int) * ((size_t)out_w * elem + 1));
        if (!acc)
            goto done;
    }
    if (need_v) {
        rs_pass(&vertical, out_h, v_shift, v_in, v_stride, out_w * elem, acc,
                out, 0, elem, channels, plane);
    } else {
        /* Only the horizontal pass: its rows are the output. */
        for (int i = 0; i < out_h; i++) {
            const unsigned char *row = v_in + (size_t)(i + y_lo - v_shift) * v_stride;
            for (int c = 0; c < channels; c++)
                for (int p = 0; p < out_w; p++)
                    out[c * plane + (size_t)i * out_w + p] = row[p * elem + c];
        }
    }
    ok = 1;
done:
    rs_axis_free(&vertical);
    rs_axis_free(&horizontal);
    free(columns);
    free(rows_t);
    free(rows);
    free(acc);
    return ok;
}

/* resample(src, in_h, in_w, elem, x0, y0, x1, y1, out_h, out_w, filter,
 *          channels, out): the Python entry point; checks sizes, releases
 * the GIL while it computes. */
static PyObject *rs_py_resample(PyObject *self, PyObject *args)
{
    Py_buffer src, out;
    int in_h, in_w, elem, out_h, out_w, filter, channels, ok;
    float box[4];
    if (!PyArg_ParseTuple(args, "y*iiiffffiiiiw*", &src, &in_h, &in_w, &elem,
                          &box[0], &box[1], &box[2], &box[3], &out_h, &out_w,
                          &filter, &channels, &out))
        return NULL;
    if (in_h < 1 || in_w < 1 || out_h < 1 || out_w < 1
        || (elem != 1 && elem != 4) || channels < 1 || channels > elem
        || filter < RS_BOX || filter > RS_LANCZOS
        || src.len != (Py_ssize_t)in_h * in_w * elem
        || out.len != (Py_ssize_t)channels * out_h * out_w
        || !(0 <= box[0] && box[0] < box[2] && box[2] <= in_w)
        || !(0 <= box[1] && box[1] < box[3] && box[3] <= in_h)) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "resample: inconsistent sizes or box");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    ok = imgclass_resample((const unsigned char *)src.buf, in_h, in_w, elem,
                           box, out_h, out_w, filter, channels,
                           (unsigned char *)out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    if (!ok)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef rs_methods[] = {
    {"resample", rs_py_resample, METH_VARARGS, "Resamples like Pillow."},
    {NULL, NULL, 0, NULL}};

#define RS_STR(x) #x
#define RS_NAME(x) RS_STR(x)
#define RS_CAT(a, b) a##b
#define RS_INIT(name) RS_CAT(PyInit_, name)

static struct PyModuleDef rs_module = {
    PyModuleDef_HEAD_INIT, RS_NAME(IMGCLASS_RS_MODULE), NULL, -1, rs_methods};

PyMODINIT_FUNC RS_INIT(IMGCLASS_RS_MODULE)(void)
{
    return PyModule_Create(&rs_module);
}
