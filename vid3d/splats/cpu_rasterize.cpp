// Front-to-back compositing of projected 2D Gaussians on the CPU, forward and backward, per pixel as
// gsplat's CUDA kernels (rasterize_to_pixels_fwd/bwd): skip sigma < 0 and alpha < 1/255, clamp alpha at
// 0.999, stop before transmittance falls to 1e-4; the backward pass walks each pixel's Gaussians back to
// front from the last one drawn. Written by hand because gsplat's rasterizer exists only for CUDA; the
// tile lists come from vid3d/splats/rasterize.py's bin_tiles. Compiled on first use (cpu_kernel.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>
#include <tuple>
#include <vector>

namespace {

constexpr double kAlphaMin = 1.0 / 255.0;
constexpr double kAlphaMax = 0.999;
constexpr double kTransmittanceMin = 1e-4;
constexpr int kPacked = 7;  // per Gaussian: mean x, mean y, conic a, b, c, opacity, largest sigma drawn

// Calls body(tile) for every tile on torch's threads, each thread taking the next tile as it comes
// free: tiles differ a hundredfold in cost.
template <typename Body>
void for_each_tile(int64_t n_tiles, const Body& body) {
  if (n_tiles == 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), n_tiles);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t tile; (tile = next.fetch_add(1)) < n_tiles;) body(tile);
  });
}

struct TileLayout {
  int64_t tiles_x, tiles_y, tile_size, width, height;
};

// A tile's Gaussians, front to back, copied next to each other: [count, kPacked] and colours [count, CH].
template <typename scalar_t, int CH>
void gather_tile(const scalar_t* gaussians, const scalar_t* colors, const int64_t* ids, int64_t count,
                 std::vector<scalar_t>& packed, std::vector<scalar_t>& tile_colors) {
  packed.resize(count * kPacked);
  tile_colors.resize(count * CH);
  for (int64_t k = 0; k < count; ++k) {
    const scalar_t* g = gaussians + ids[k] * 6;
    scalar_t* p = packed.data() + k * kPacked;
    std::copy(g, g + 6, p);
    // alpha = opacity exp(-sigma) < 1/255 beyond sigma = log(255 opacity): pixels past it are skipped
    // without evaluating them (the exact test follows, so the margin only keeps rounding out of it)
    p[6] = std::log(std::max<scalar_t>(g[5] / kAlphaMin, 1e-30)) + 1e-3;
    std::copy(colors + ids[k] * CH, colors + (ids[k] + 1) * CH, tile_colors.data() + k * CH);
  }
}

// A tile's pixels are processed in packs of 16 bytes (4 floats or 2 doubles) with GCC's vector
// extensions: GCC 12 did not vectorize these loops from plain code (masked updates of several arrays).
template <typename scalar_t>
struct Pack;
template <>
struct Pack<float> {
  typedef float V __attribute__((vector_size(16)));
  typedef int32_t Mask __attribute__((vector_size(16)));
};
template <>
struct Pack<double> {
  typedef double V __attribute__((vector_size(16)));
  typedef int64_t Mask __attribute__((vector_size(16)));
};
template <typename scalar_t>
using V = typename Pack<scalar_t>::V;
template <typename scalar_t>
constexpr int64_t kWidth = 16 / sizeof(scalar_t);

template <typename scalar_t>
scalar_t lane_sum(V<scalar_t> v) {
  scalar_t sum = 0;
  for (int64_t j = 0; j < kWidth<scalar_t>; ++j) sum += v[j];
  return sum;
}

template <typename scalar_t>
bool any_lane(typename Pack<scalar_t>::Mask m) {
  bool any = false;
  for (int64_t j = 0; j < kWidth<scalar_t>; ++j) any |= m[j] != 0;
  return any;
}

// exp(x) clamped to [kExpFloor, 0]: below kExpFloor alpha is far below 1/255 either way, and lanes that
// are masked out would otherwise compute with denormals, tens of times slower. Floats: Cephes' expf
// (relative error ~2e-7, as CUDA's __expf that gsplat uses), branch-free; doubles: std::exp per lane.
constexpr double kExpFloor = -30.0;
inline V<float> exp_clamped(V<float> x) {
  typedef Pack<float>::Mask Int;
  x = x < float(kExpFloor) ? float(kExpFloor) : x;
  x = x > 0.0f ? 0.0f : x;
  const V<float> n = __builtin_convertvector(__builtin_convertvector(x * 1.44269504f - 0.5f, Int), V<float>);
  const V<float> r = x - n * 0.693359375f + n * 2.12194440e-4f;
  V<float> p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const Int bits = (__builtin_convertvector(n, Int) + 127) << 23;  // 2^n
  return p * (V<float>)bits;  // a cast between vector types of one size keeps the bits
}
inline V<double> exp_clamped(V<double> x) {
  V<double> out;
  for (int64_t j = 0; j < kWidth<double>; ++j) out[j] = std::exp(std::min(std::max(x[j], kExpFloor), 0.0));
  return out;
}

// Per-pixel state of one tile in packs: NP = pixels / kWidth packs, channels [CH][NP]. Reused by a thread.
template <typename scalar_t>
struct Lanes {
  std::vector<V<scalar_t>> px, py, sigma, trans, open, last, sums, extra, behind;
  std::vector<int64_t> pixel;  // index into [C, H, W] of each pixel, -1 outside the image

  void start(const TileLayout& layout, int64_t tile, int channels) {
    const int64_t size = layout.tile_size, pixels = size * size, packs = pixels / kWidth<scalar_t>;
    const int64_t per_camera = layout.tiles_x * layout.tiles_y, camera = tile / per_camera, within = tile % per_camera;
    const int64_t x0 = (within % layout.tiles_x) * size, y0 = (within / layout.tiles_x) * size;
    const V<scalar_t> zero = {};
    for (auto* v : {&px, &py, &sigma, &trans, &open, &last, &extra}) v->assign(packs, zero);
    sums.assign(packs * channels, zero);
    behind.assign(packs * channels, zero);
    pixel.assign(pixels, -1);
    for (int64_t i = 0; i < pixels; ++i) {
      const int64_t x = x0 + i % size, y = y0 + i / size, pack = i / kWidth<scalar_t>, lane = i % kWidth<scalar_t>;
      px[pack][lane] = x + scalar_t(0.5);
      py[pack][lane] = y + scalar_t(0.5);
      if (x < layout.width && y < layout.height) pixel[i] = (camera * layout.height + y) * layout.width + x;
    }
  }
};

// sigma of Gaussian p at every pixel; whether any pixel with live > 0 might draw it (sigma in [0, cut])
template <typename scalar_t, int64_t packs>
bool sigmas(const scalar_t* p, const V<scalar_t>* px, const V<scalar_t>* py, const V<scalar_t>* live,
            V<scalar_t>* sigma) {
  typename Pack<scalar_t>::Mask near = {};
  for (int64_t i = 0; i < packs; ++i) {
    const V<scalar_t> dx = p[0] - px[i], dy = p[1] - py[i];
    sigma[i] = scalar_t(0.5) * (p[2] * dx * dx + p[4] * dy * dy) + p[3] * dx * dy;
    near |= (live[i] > 0) & (sigma[i] >= 0) & (sigma[i] <= p[6]);
  }
  return any_lane<scalar_t>(near);
}

template <typename scalar_t, int CH, int64_t packs>
void forward_tile(const scalar_t* packed, const scalar_t* colors, int64_t count, Lanes<scalar_t>& s) {
  V<scalar_t>*trans = s.trans.data(), *open = s.open.data(), *sigma = s.sigma.data(), *sums = s.sums.data(),
  *last = s.last.data(), *crossing = s.extra.data();
  for (int64_t i = 0; i < packs * kWidth<scalar_t>; ++i) {
    trans[i / kWidth<scalar_t>][i % kWidth<scalar_t>] = 1;
    open[i / kWidth<scalar_t>][i % kWidth<scalar_t>] = s.pixel[i] >= 0;
  }
  for (int64_t k = 0; k < count; ++k) {
    const scalar_t* p = packed + k * kPacked;
    if (!sigmas<scalar_t, packs>(p, s.px.data(), s.py.data(), open, sigma)) continue;
    const scalar_t* color = colors + k * CH;
    typename Pack<scalar_t>::Mask still_open = {};
    for (int64_t i = 0; i < packs; ++i) {
      const V<scalar_t> raw = p[5] * exp_clamped(-sigma[i]);
      const V<scalar_t> alpha = raw < scalar_t(kAlphaMax) ? raw : scalar_t(kAlphaMax);
      const auto valid = (open[i] > 0) & (sigma[i] >= 0) & (alpha >= scalar_t(kAlphaMin));
      const V<scalar_t> next = trans[i] * (1 - alpha);
      const auto stop = valid & (next <= scalar_t(kTransmittanceMin));  // gsplat stops before drawing it
      const auto draw = valid & ~stop;
      const V<scalar_t> weight = draw ? alpha * trans[i] : scalar_t(0);
      for (int d = 0; d < CH; ++d) sums[d * packs + i] += weight * color[d];
      // the Gaussian that takes transmittance below one half (median depth, with depths as the colour)
      crossing[i] = draw & (trans[i] >= scalar_t(0.5)) & (next < scalar_t(0.5)) ? color[0] : crossing[i];
      trans[i] = draw ? next : trans[i];
      last[i] = draw ? scalar_t(k + 1) : last[i];
      open[i] = stop ? scalar_t(0) : open[i];
      still_open |= open[i] > 0;
    }
    if (!any_lane<scalar_t>(still_open)) break;
  }
}

template <typename scalar_t, int CH, int64_t packs>
void forward_kernel(const scalar_t* gaussians, const scalar_t* colors, const int64_t* ids, const int64_t* start,
                    const int64_t* count, int64_t n_tiles, const TileLayout& layout, scalar_t* out_color,
                    scalar_t* out_trans, int32_t* out_last, scalar_t* out_crossing) {
  for_each_tile(n_tiles, [&](int64_t tile) {
    thread_local std::vector<scalar_t> packed, tile_colors;
    thread_local Lanes<scalar_t> s;
    gather_tile<scalar_t, CH>(gaussians, colors, ids + start[tile], count[tile], packed, tile_colors);
    s.start(layout, tile, CH);
    forward_tile<scalar_t, CH, packs>(packed.data(), tile_colors.data(), count[tile], s);
    for (int64_t i = 0; i < packs * kWidth<scalar_t>; ++i) {
      const int64_t pixel = s.pixel[i], pack = i / kWidth<scalar_t>, lane = i % kWidth<scalar_t>;
      if (pixel < 0) continue;
      for (int d = 0; d < CH; ++d) out_color[pixel * CH + d] = s.sums[d * packs + pack][lane];
      out_trans[pixel] = s.trans[pack][lane];
      out_last[pixel] = static_cast<int32_t>(s.last[pack][lane]);
      out_crossing[pixel] = s.extra[pack][lane];
    }
  });
}

// Gradients of one tile's Gaussians, walking back to front from the last Gaussian any pixel drew.
// s.trans, s.sums, s.extra, s.last hold each pixel's final transmittance, dL/dcolour [CH][NP],
// -T_final dL/dT_final, and Gaussians drawn. Adds to v [count, v_width] and v_colors [count, CH].
template <typename scalar_t, int CH, int64_t packs>
void backward_tile(const scalar_t* packed, const scalar_t* colors, Lanes<scalar_t>& s, int64_t v_width, scalar_t* v,
                   scalar_t* v_colors) {
  typedef V<scalar_t> Vec;
  Vec *trans = s.trans.data(), *sigma = s.sigma.data(), *gc = s.sums.data(), *final_term = s.extra.data(),
      *last = s.last.data(), *behind = s.behind.data(), *live = s.open.data();  // behind: sum of weight * colour
  scalar_t walked = 0;
  for (int64_t i = 0; i < packs; ++i)
    for (int64_t j = 0; j < kWidth<scalar_t>; ++j) walked = std::max(walked, last[i][j]);
  for (int64_t k = static_cast<int64_t>(walked) - 1; k >= 0; --k) {
    const scalar_t* p = packed + k * kPacked;
    for (int64_t i = 0; i < packs; ++i) live[i] = last[i] > scalar_t(k) ? scalar_t(1) : scalar_t(0);
    if (!sigmas<scalar_t, packs>(p, s.px.data(), s.py.data(), live, sigma)) continue;
    const scalar_t* color = colors + k * CH;
    const scalar_t a = p[2], b = p[3], c = p[4];
    Vec g[6] = {}, abs_mean[2] = {}, g_color[CH] = {};
    for (int64_t i = 0; i < packs; ++i) {
      const Vec vis = exp_clamped(-sigma[i]), raw = p[5] * vis;
      const Vec alpha = raw < scalar_t(kAlphaMax) ? raw : scalar_t(kAlphaMax);
      const auto valid = (live[i] > 0) & (sigma[i] >= 0) & (alpha >= scalar_t(kAlphaMin));
      const Vec keep_inv = 1 / (1 - alpha);
      const Vec before = valid ? trans[i] * keep_inv : trans[i];  // transmittance before Gaussian k
      const Vec weight = valid ? alpha * before : scalar_t(0);
      Vec v_alpha = final_term[i] * keep_inv;
      for (int d = 0; d < CH; ++d) {
        v_alpha += (color[d] * before - behind[d * packs + i] * keep_inv) * gc[d * packs + i];
        g_color[d] += weight * gc[d * packs + i];
        behind[d * packs + i] += weight * color[d];
      }
      // where alpha is clamped it does not move with the Gaussian
      const auto moves = valid & (raw <= scalar_t(kAlphaMax));
      const Vec v_sigma = moves ? -raw * v_alpha : scalar_t(0);
      const Vec dx = p[0] - s.px[i], dy = p[1] - s.py[i];
      const Vec v_mx = v_sigma * (a * dx + b * dy), v_my = v_sigma * (b * dx + c * dy);
      g[0] += v_mx;
      g[1] += v_my;
      g[2] += scalar_t(0.5) * v_sigma * dx * dx;
      g[3] += v_sigma * dx * dy;
      g[4] += scalar_t(0.5) * v_sigma * dy * dy;
      g[5] += moves ? vis * v_alpha : scalar_t(0);
      abs_mean[0] += v_mx < 0 ? -v_mx : v_mx;
      abs_mean[1] += v_my < 0 ? -v_my : v_my;
      trans[i] = before;
    }
    scalar_t* row = v + k * v_width;
    for (int j = 0; j < 6; ++j) row[j] += lane_sum<scalar_t>(g[j]);
    if (v_width > 6) row[6] += lane_sum<scalar_t>(abs_mean[0]), row[7] += lane_sum<scalar_t>(abs_mean[1]);
    for (int d = 0; d < CH; ++d) v_colors[k * CH + d] += lane_sum<scalar_t>(g_color[d]);
  }
}

template <typename scalar_t, int CH, int64_t packs>
void backward_kernel(const scalar_t* gaussians, const scalar_t* colors, const int64_t* ids, const int64_t* start,
                     const int64_t* count, int64_t n_tiles, const TileLayout& layout, const scalar_t* out_trans,
                     const int32_t* out_last, const scalar_t* grad_color, const scalar_t* grad_trans, int64_t v_width,
                     scalar_t* v_pairs, scalar_t* v_pair_colors) {
  for_each_tile(n_tiles, [&](int64_t tile) {
    thread_local std::vector<scalar_t> packed, tile_colors;
    thread_local Lanes<scalar_t> s;
    gather_tile<scalar_t, CH>(gaussians, colors, ids + start[tile], count[tile], packed, tile_colors);
    s.start(layout, tile, CH);
    for (int64_t i = 0; i < packs * kWidth<scalar_t>; ++i) {
      const int64_t pixel = s.pixel[i], pack = i / kWidth<scalar_t>, lane = i % kWidth<scalar_t>;
      if (pixel < 0) continue;
      s.trans[pack][lane] = out_trans[pixel];
      s.last[pack][lane] = out_last[pixel];
      // Gaussian k's alpha scales the final transmittance by 1 / (1 - alpha)
      s.extra[pack][lane] = -grad_trans[pixel] * out_trans[pixel];
      for (int d = 0; d < CH; ++d) s.sums[d * packs + pack][lane] = grad_color[pixel * CH + d];
    }
    // one gradient row per (tile, Gaussian) pair: no two threads write the same row
    backward_tile<scalar_t, CH, packs>(packed.data(), tile_colors.data(), s, v_width, v_pairs + start[tile] * v_width,
                                       v_pair_colors + start[tile] * CH);
  });
}

// Calls f(channels, pixels per tile) as compile-time constants (loops of known length vectorize):
// 1 to 4, 8 or 12 colour channels (cpu_kernel.py pads other counts with zero channels: colour plus the
// surface channels of vid3d/splats/surface.py), tiles of 4, 8 or 16 pixels.
template <typename F>
void dispatch_sizes(int64_t channels, int64_t tile_size, const F& f) {
  auto with_tile = [&](auto ch) {
    switch (tile_size) {
      case 4: return f(ch, std::integral_constant<int64_t, 16>());
      case 8: return f(ch, std::integral_constant<int64_t, 64>());
      case 16: return f(ch, std::integral_constant<int64_t, 256>());
      default: TORCH_CHECK(false, "the compiled rasterizer takes tiles of 4, 8 or 16 pixels, not ", tile_size);
    }
  };
  switch (channels) {
    case 1: return with_tile(std::integral_constant<int, 1>());
    case 2: return with_tile(std::integral_constant<int, 2>());
    case 3: return with_tile(std::integral_constant<int, 3>());
    case 4: return with_tile(std::integral_constant<int, 4>());
    case 8: return with_tile(std::integral_constant<int, 8>());
    case 12: return with_tile(std::integral_constant<int, 12>());
    default: TORCH_CHECK(false, "the compiled rasterizer draws 1 to 4, 8 or 12 channels, not ", channels);
  }
}

void check(const at::Tensor& gaussians, const at::Tensor& colors, const at::Tensor& tile_gaussians,
           const at::Tensor& tile_start, const at::Tensor& tile_count) {
  TORCH_CHECK(gaussians.device().is_cpu() && gaussians.is_contiguous() && gaussians.size(1) == 6,
              "gaussians: contiguous [M, 6] on the CPU");
  TORCH_CHECK(colors.is_contiguous() && colors.scalar_type() == gaussians.scalar_type(), "colors: contiguous [M, D]");
  for (const auto* t : {&tile_gaussians, &tile_start, &tile_count})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kLong, "tile lists: contiguous int64");
}

// -> colour [C, H, W, D], transmittance [C, H, W], Gaussians drawn per pixel [C, H, W] (int32), and
// the first colour channel of the Gaussian at which transmittance falls below one half [C, H, W] (0
// where it never does)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& gaussians, const at::Tensor& colors,
                                                       const at::Tensor& tile_gaussians, const at::Tensor& tile_start,
                                                       const at::Tensor& tile_count, int64_t n_cameras, int64_t tiles_x,
                                                       int64_t tiles_y, int64_t tile_size, int64_t width, int64_t height) {
  check(gaussians, colors, tile_gaussians, tile_start, tile_count);
  const TileLayout layout{tiles_x, tiles_y, tile_size, width, height};
  auto out_color = at::zeros({n_cameras, height, width, colors.size(1)}, colors.options());
  auto out_trans = at::ones({n_cameras, height, width}, colors.options());
  auto out_last = at::zeros({n_cameras, height, width}, colors.options().dtype(at::kInt));
  auto out_crossing = at::zeros({n_cameras, height, width}, colors.options());
  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "vid3d_raster_forward", [&] {
    dispatch_sizes(colors.size(1), tile_size, [&](auto ch, auto lanes) {
      forward_kernel<scalar_t, decltype(ch)::value, decltype(lanes)::value / kWidth<scalar_t>>(
          gaussians.data_ptr<scalar_t>(), colors.data_ptr<scalar_t>(), tile_gaussians.data_ptr<int64_t>(),
          tile_start.data_ptr<int64_t>(), tile_count.data_ptr<int64_t>(), tile_count.size(0), layout,
          out_color.data_ptr<scalar_t>(), out_trans.data_ptr<scalar_t>(), out_last.data_ptr<int32_t>(),
          out_crossing.data_ptr<scalar_t>());
    });
  });
  return {out_color, out_trans, out_last, out_crossing};
}

// -> gradients per (tile, Gaussian) pair, in bin order: [L, 6] (mean x, mean y, conic a, b, c, opacity;
// 8 with the absolute mean gradients) and [L, D] colours; grad_trans is dL/d(final transmittance)
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& gaussians, const at::Tensor& colors,
                                            const at::Tensor& tile_gaussians, const at::Tensor& tile_start,
                                            const at::Tensor& tile_count, int64_t tiles_x, int64_t tiles_y,
                                            int64_t tile_size, int64_t width, int64_t height,
                                            const at::Tensor& out_trans, const at::Tensor& out_last,
                                            const at::Tensor& grad_color, const at::Tensor& grad_trans, bool absgrad) {
  check(gaussians, colors, tile_gaussians, tile_start, tile_count);
  TORCH_CHECK(grad_color.is_contiguous() && grad_trans.is_contiguous() && out_trans.is_contiguous() &&
                  out_last.is_contiguous(), "gradients: contiguous");
  const TileLayout layout{tiles_x, tiles_y, tile_size, width, height};
  const int64_t v_width = absgrad ? 8 : 6;
  auto v_pairs = at::zeros({tile_gaussians.size(0), v_width}, colors.options());
  auto v_pair_colors = at::zeros({tile_gaussians.size(0), colors.size(1)}, colors.options());
  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "vid3d_raster_backward", [&] {
    dispatch_sizes(colors.size(1), tile_size, [&](auto ch, auto lanes) {
      backward_kernel<scalar_t, decltype(ch)::value, decltype(lanes)::value / kWidth<scalar_t>>(
          gaussians.data_ptr<scalar_t>(), colors.data_ptr<scalar_t>(), tile_gaussians.data_ptr<int64_t>(),
          tile_start.data_ptr<int64_t>(), tile_count.data_ptr<int64_t>(), tile_count.size(0), layout,
          out_trans.data_ptr<scalar_t>(), out_last.data_ptr<int32_t>(), grad_color.data_ptr<scalar_t>(),
          grad_trans.data_ptr<scalar_t>(), v_width, v_pairs.data_ptr<scalar_t>(), v_pair_colors.data_ptr<scalar_t>());
    });
  });
  return {v_pairs, v_pair_colors};
}

}  // namespace

TORCH_LIBRARY(vid3d_raster, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
}
