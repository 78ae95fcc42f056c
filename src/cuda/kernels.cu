// linesight's preprocessing and mask-paste kernels, compiled at run time by NVRTC.
// Resize arithmetic, so that the tensors equal the CPU path's:
//  * letterboxes (linear = 1): OpenCV's INTER_LINEAR (imaging::linear::linear_pixel): two source
//    columns and rows per output pixel, 11-bit weights, horizontal sums exact, the vertical blend
//    rounded once;
//  * crops (linear = 0): fast_image_resize's u8 bilinear (fixed-point taps from imaging::resample:
//    a vertical pass rounded to u8, then a horizontal pass).

struct Region {
    unsigned long long src_offset;  // byte offset of the source RGB8 image in `pixels`
    int src_width;                  // row stride in pixels
    int dst_left, dst_top;          // where the resized rectangle sits in the output plane
    int dst_width, dst_height;      // outside it: padding
    int taps_x, taps_y;             // first entry of this region's taps in starts/counts
    int weights_x, weights_y;       // first weight of this region's taps in weights
    int window_x, window_y;
    int precision_x, precision_y;
    int linear;                     // 1: OpenCV INTER_LINEAR; starts/counts hold the two coordinates
};

__device__ __forceinline__ int clip8(int v, int precision) {
    int shifted = v >> precision;
    return shifted < 0 ? 0 : (shifted > 255 ? 255 : shifted);
}

// imaging::linear::blend_rows: OpenCV's v_mul_hi(h >> 4, b) per row, summed, (sum + 2) >> 2.
__device__ __forceinline__ int blend_rows(int h0, int h1, int b0, int b1) {
    const int v = (((h0 >> 4) * b0) >> 16) + (((h1 >> 4) * b1) >> 16);
    const int out = (v + 2) >> 2;
    return out < 0 ? 0 : (out > 255 ? 255 : out);
}

// The letterboxed RGB pixel at (lx, ly) of a linear region (imaging::linear::linear_pixel).
__device__ __forceinline__ void resample_linear(const unsigned char* __restrict__ pixels, const Region& r,
                                                const int* __restrict__ first, const int* __restrict__ second,
                                                const short* __restrict__ weights, int lx, int ly, int rgb[3]) {
    const long long stride = (long long)r.src_width * 3;
    const unsigned char* src = pixels + r.src_offset;
    const int x0 = first[r.taps_x + lx] * 3, x1 = second[r.taps_x + lx] * 3;
    const unsigned char* row0 = src + (long long)first[r.taps_y + ly] * stride;
    const unsigned char* row1 = src + (long long)second[r.taps_y + ly] * stride;
    const short* a = weights + r.weights_x + lx * 2;
    const short* b = weights + r.weights_y + ly * 2;
    for (int c = 0; c < 3; ++c) {
        const int h0 = row0[x0 + c] * a[0] + row0[x1 + c] * a[1];
        const int h1 = row1[x0 + c] * a[0] + row1[x1 + c] * a[1];
        rgb[c] = blend_rows(h0, h1, b[0], b[1]);
    }
}

// The resized RGB pixel at (lx, ly) of region r.
__device__ __forceinline__ void resample(const unsigned char* __restrict__ pixels, const Region& r,
                                         const int* __restrict__ starts, const int* __restrict__ counts,
                                         const short* __restrict__ weights, int lx, int ly, int rgb[3]) {
    const int xs = starts[r.taps_x + lx], xc = counts[r.taps_x + lx];
    const int ys = starts[r.taps_y + ly], yc = counts[r.taps_y + ly];
    const short* wx = weights + r.weights_x + lx * r.window_x;
    const short* wy = weights + r.weights_y + ly * r.window_y;
    const int init_x = 1 << (r.precision_x - 1), init_y = 1 << (r.precision_y - 1);
    int h0 = init_x, h1 = init_x, h2 = init_x;
    const unsigned char* src = pixels + r.src_offset;
    const long long stride = (long long)r.src_width * 3;
    for (int i = 0; i < xc; ++i) {
        const unsigned char* col = src + (long long)(xs + i) * 3;
        int v0 = init_y, v1 = init_y, v2 = init_y;
        for (int j = 0; j < yc; ++j) {
            const unsigned char* p = col + (long long)(ys + j) * stride;
            const int k = wy[j];
            v0 += p[0] * k;
            v1 += p[1] * k;
            v2 += p[2] * k;
        }
        const int k = wx[i];
        h0 += clip8(v0, r.precision_y) * k;
        h1 += clip8(v1, r.precision_y) * k;
        h2 += clip8(v2, r.precision_y) * k;
    }
    rgb[0] = clip8(h0, r.precision_x);
    rgb[1] = clip8(h1, r.precision_x);
    rgb[2] = clip8(h2, r.precision_x);
}

__device__ __forceinline__ unsigned short to_half_bits(float x) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}

// One thread per output pixel of one region (blockIdx.y): resize, pad, normalise through the
// 3×256 table `lut` (tensor channel c reads RGB channel c, or 2 - c when swap_rb), write CHW.
template <typename Out, typename Store>
__device__ __forceinline__ void preprocess(const unsigned char* __restrict__ pixels, const Region* __restrict__ regions,
                                           const int* __restrict__ starts, const int* __restrict__ counts,
                                           const short* __restrict__ weights, const float* __restrict__ lut,
                                           int pad_value, int out_w, int out_h, int swap_rb, Out* __restrict__ out,
                                           Store store) {
    const int region = blockIdx.y;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    const int plane = out_w * out_h;
    if (idx >= plane) return;
    const int ox = idx % out_w, oy = idx / out_w;
    const Region r = regions[region];
    int rgb[3] = {pad_value, pad_value, pad_value};
    const int lx = ox - r.dst_left, ly = oy - r.dst_top;
    if (lx >= 0 && ly >= 0 && lx < r.dst_width && ly < r.dst_height) {
        if (r.linear) {
            resample_linear(pixels, r, starts, counts, weights, lx, ly, rgb);
        } else {
            resample(pixels, r, starts, counts, weights, lx, ly, rgb);
        }
    }
    Out* base = out + (long long)region * 3 * plane + idx;
    for (int c = 0; c < 3; ++c) {
        const int s = swap_rb ? 2 - c : c;
        store(base + (long long)c * plane, lut[c * 256 + rgb[s]]);
    }
}

struct StoreF32 {
    __device__ void operator()(float* p, float v) const { *p = v; }
};
struct StoreF16 {
    __device__ void operator()(unsigned short* p, float v) const { *p = to_half_bits(v); }
};

extern "C" __global__ void preprocess_f32(const unsigned char* pixels, const Region* regions, const int* starts,
                                          const int* counts, const short* weights, const float* lut, int pad_value,
                                          int out_w, int out_h, int swap_rb, float* out) {
    preprocess(pixels, regions, starts, counts, weights, lut, pad_value, out_w, out_h, swap_rb, out, StoreF32());
}

extern "C" __global__ void preprocess_f16(const unsigned char* pixels, const Region* regions, const int* starts,
                                          const int* counts, const short* weights, const float* lut, int pad_value,
                                          int out_w, int out_h, int swap_rb, unsigned short* out) {
    preprocess(pixels, regions, starts, counts, weights, lut, pad_value, out_w, out_h, swap_rb, out, StoreF16());
}

struct Paste {
    int mask_offset;                // first probability of this instance's side×side mask
    float x1, y1, x2, y2;           // the box, in image pixels
    int left, top, width, height;   // the pixels written (segment::paste_region)
    int out_offset;                 // first byte of this instance's width×height output
};

// One thread per output pixel of one instance (blockIdx.y). Same operations in the same order as
// segment::paste_mask; built with --fmad=false so no multiply-add is fused.
extern "C" __global__ void paste_masks(const float* __restrict__ masks, const Paste* __restrict__ pastes, int side,
                                       float threshold, unsigned char* __restrict__ out) {
    const Paste p = pastes[blockIdx.y];
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= p.width * p.height) return;
    const int col = idx % p.width, row = idx / p.width;
    const float x = (float)(p.left + col), y = (float)(p.top + row);
    const float m = (float)side;
    const float bw = fmaxf(p.x2 - p.x1, 1e-6f), bh = fmaxf(p.y2 - p.y1, 1e-6f);
    float u = ((x + 0.5f - p.x1) / bw) * m - 0.5f;
    float v = ((y + 0.5f - p.y1) / bh) * m - 0.5f;
    u = fminf(fmaxf(u, 0.0f), m - 1.0f);
    v = fminf(fmaxf(v, 0.0f), m - 1.0f);
    const float u0 = floorf(u), v0 = floorf(v);
    const float fu = u - u0, fv = v - v0;
    const int i0 = (int)u0, j0 = (int)v0;
    const int i1 = min(i0 + 1, side - 1), j1 = min(j0 + 1, side - 1);
    const float* mk = masks + p.mask_offset;
    const float top = mk[j0 * side + i0] * (1.0f - fu) + mk[j0 * side + i1] * fu;
    const float bottom = mk[j1 * side + i0] * (1.0f - fu) + mk[j1 * side + i1] * fu;
    const float prob = top * (1.0f - fv) + bottom * fv;
    out[p.out_offset + idx] = prob >= threshold ? 1 : 0;
}
