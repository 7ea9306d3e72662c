// The sparse corrections of a mixed-mask batch, every mask's rows in one call (see row_kernel.py).
//
// y[T, out] holds x[T, in] times the shared weight W. Rows [starts[g], starts[g+1]) of x computed with
// mask g, whose masked-out weights are given by their flat positions o * in + i in the [out, in]
// orientation, grouped by output row (positions[g][crows[g][o] .. crows[g][o+1]) are row o's), and
// their values in the same order. This subtracts, in place, y[t, o] -= sum over row o's positions of
// W[o, i] * x[t, i].
//
// Layout: each group's rows are transposed into a zero-padded [in, n] block, so one masked-out
// weight multiplies 16 (or 32) rows with one vector FMA. Work items are (group, 16 output rows), so a
// group's block stays in cache while its rows are done; they are spread over torch's intra-op threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

struct Group {
  int64_t start, rows, padded, offset;
  const int32_t* crow;
  const int32_t* pos;
  const float* val;  // the weights at `pos`, in the same order
};

// acc[0..2*kLanes) (or [0..kLanes) when `two` is false) = sum_k val[k] * xt[col[k] * n + 0..]
template <bool two>
inline void accumulate(const Group& g, int64_t in, const float* xt, int64_t o, float* acc) {
  const int32_t k0 = g.crow[o], k1 = g.crow[o + 1];
  const int64_t n = g.padded, row = o * in;
  Vec a0 = {}, a1 = {}, b0 = {}, b1 = {};
  int32_t k = k0;
  for (; k + 1 < k1; k += 2) {  // two entries at a time: independent FMA chains
    const float u = g.val[k], v = g.val[k + 1];
    const float* p = xt + (g.pos[k] - row) * n;
    const float* q = xt + (g.pos[k + 1] - row) * n;
    a0 += u * load(p);
    b0 += v * load(q);
    if (two) {
      a1 += u * load(p + kLanes);
      b1 += v * load(q + kLanes);
    }
  }
  if (k < k1) {
    const float u = g.val[k];
    const float* p = xt + (g.pos[k] - row) * n;
    a0 += u * load(p);
    if (two) a1 += u * load(p + kLanes);
  }
  a0 += b0;
  std::memcpy(acc, &a0, sizeof a0);
  if (two) {
    a1 += b1;
    std::memcpy(acc + kLanes, &a1, sizeof a1);
  }
}

}  // namespace

void subtract_row_corrections(torch::Tensor y, torch::Tensor x, torch::Tensor starts, std::vector<torch::Tensor> crows,
                              std::vector<torch::Tensor> positions, std::vector<torch::Tensor> values) {
  TORCH_CHECK(y.dim() == 2 && x.dim() == 2 && y.size(0) == x.size(0), "y and x must be [tokens, features]");
  TORCH_CHECK(y.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat, "y and x must be float32");
  TORCH_CHECK(y.is_contiguous() && x.is_contiguous(), "y and x must be contiguous");
  TORCH_CHECK(y.device().is_cpu() && x.device().is_cpu(), "CPU tensors only");
  const int64_t tokens = x.size(0), in = x.size(1), out = y.size(1);
  TORCH_CHECK(in * out < (int64_t{1} << 31), "the layer is too large for int32 positions");
  const int64_t count = static_cast<int64_t>(crows.size());
  TORCH_CHECK(positions.size() == crows.size(), "one crow and one positions tensor per group");
  TORCH_CHECK(values.size() == crows.size(), "one values tensor per group");
  TORCH_CHECK(starts.scalar_type() == at::kLong && starts.dim() == 1 && starts.numel() == count + 1 &&
                  starts.is_contiguous(),
              "starts must be int64 with one more entry than groups");
  const int64_t* st = starts.data_ptr<int64_t>();
  TORCH_CHECK(st[0] >= 0 && st[count] <= tokens, "starts out of range");

  std::vector<Group> groups(static_cast<size_t>(count));
  int64_t total = 0;
  for (int64_t g = 0; g < count; ++g) {
    TORCH_CHECK(st[g + 1] >= st[g], "starts must not decrease");
    const auto& crow = crows[g];
    const auto& pos = positions[g];
    TORCH_CHECK(crow.scalar_type() == at::kInt && pos.scalar_type() == at::kInt, "crows and positions must be int32");
    TORCH_CHECK(crow.is_contiguous() && pos.is_contiguous() && crow.device().is_cpu() && pos.device().is_cpu(),
                "crows and positions must be contiguous CPU tensors");
    TORCH_CHECK(crow.numel() == out + 1, "a crow tensor must have out + 1 entries");
    const int32_t* c = crow.data_ptr<int32_t>();
    const int32_t* p = pos.data_ptr<int32_t>();
    TORCH_CHECK(c[0] == 0 && c[out] == pos.numel(), "row pointers do not match the positions");
    // Each position must lie in its row, [o * in, (o + 1) * in): DecodedMask.row_positions builds them so
    // and checks it once per mask and layer; here, only the row pointers (cheap) are checked per call.
    for (int64_t o = 0; o < out; ++o) TORCH_CHECK(c[o] <= c[o + 1], "row pointers must not decrease");
    const int64_t rows = st[g + 1] - st[g];
    const int64_t padded = (rows + kLanes - 1) / kLanes * kLanes;
    const auto& val = values[g];
    TORCH_CHECK(val.scalar_type() == at::kFloat && val.is_contiguous() && val.device().is_cpu() &&
                    val.numel() == pos.numel(),
                "values must be contiguous float32 CPU tensors, one per position");
    groups[g] = {st[g], rows, padded, total, c, p, val.data_ptr<float>()};
    total += padded * in;
  }
  // The transposed rows, in a buffer kept for the next call of this thread (fresh pages cost a fault
  // each), given back when a call needed more than kKeepFloats.
  thread_local std::vector<float> buffer;
  if (buffer.size() < static_cast<size_t>(total)) buffer.resize(static_cast<size_t>(total));
  float* xt = buffer.data();
  const float* X = x.data_ptr<float>();
  const int64_t in_blocks = (in + kLanes - 1) / kLanes;
  // Items: (group, 16 inputs). Reading 16 consecutive inputs of a row is one cache line; reading one
  // input down the rows would hit one cache set per row when a row is a multiple of 4 KiB.
  at::parallel_for(0, count * in_blocks, 8, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const Group& g = groups[item / in_blocks];
      const int64_t i0 = (item % in_blocks) * kLanes, width = std::min<int64_t>(kLanes, in - i0);
      float* dst = xt + g.offset + i0 * g.padded;
      for (int64_t t = 0; t < g.rows; ++t) {
        const float* src = X + (g.start + t) * in + i0;
        for (int64_t j = 0; j < width; ++j) dst[j * g.padded + t] = src[j];
      }
      for (int64_t j = 0; j < width; ++j) std::fill(dst + j * g.padded + g.rows, dst + (j + 1) * g.padded, 0.f);
    }
  });

  float* Y = y.data_ptr<float>();
  const int64_t out_blocks = (out + kLanes - 1) / kLanes;
  int64_t widest = 0;
  for (const Group& g : groups) widest = std::max(widest, g.padded);
  // Items: (group, 16 outputs). The 16 x n corrections go to a small tile first, then each row of y
  // takes 16 consecutive outputs at once (writing down a column of y would thrash one cache set).
  at::parallel_for(0, count * out_blocks, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(static_cast<size_t>(kLanes * widest) + 2 * kLanes);
    for (int64_t item = begin; item < end; ++item) {
      const Group& g = groups[item / out_blocks];
      const int64_t o0 = (item % out_blocks) * kLanes, height = std::min<int64_t>(kLanes, out - o0);
      for (int64_t j = 0; j < height; ++j) {
        float* corrections = tile.data() + j * g.padded;
        for (int64_t block = 0; block < g.padded; block += 2 * kLanes) {
          const float* xb = xt + g.offset + block;
          if (block + 2 * kLanes <= g.padded) {
            accumulate<true>(g, in, xb, o0 + j, corrections + block);
          } else {
            accumulate<false>(g, in, xb, o0 + j, corrections + block);
          }
        }
      }
      for (int64_t t = 0; t < g.rows; ++t) {
        float* row = Y + (g.start + t) * out + o0;
        const float* column = tile.data() + t;
        for (int64_t j = 0; j < height; ++j) row[j] -= column[j * g.padded];
      }
    }
  });
  constexpr size_t kKeepFloats = size_t{4} << 20;  // 16 MiB
  if (buffer.size() > kKeepFloats) std::vector<float>().swap(buffer);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("subtract_row_corrections", &subtract_row_corrections,
        "y[t] -= x[t] (W * P_g)^T for the rows t of each group g, P_g its masked-out positions by output row");
}
