// aspp-edge's aarch64 ExecuTorch runner: the runtime's own C++ API (Module), linked against the
// libexecutorch*.so of the pinned executorch aarch64 wheel, as an app links it (no torch, no Python).
//
//   et_run MODEL.pte COUNT IN_PREFIX OUT_PREFIX
//
// For i in 0..COUNT-1: reads IN_PREFIX<i>.bin (the forward method's input 0, raw bytes in the
// method's dtype and shape), runs `forward`, writes output 0's raw bytes to OUT_PREFIX<i>.bin.
// Prints `input|output DTYPE_CODE D0xD1x...`, `ran N`, `hwcap HWCAP HWCAP2` (what the CPU offers the
// runtime, from the auxiliary vector) and `map START-END PATH` for every executable mapping of a
// shared library (to place the executed code in a library). Exit code 1 on any error, with the
// runtime's error code on stderr.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/auxv.h>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

using executorch::extension::from_blob;
using executorch::extension::module::Module;
using executorch::runtime::Error;

static int fail(const std::string& what, Error err) {
  std::fprintf(stderr, "et_run: %s failed (executorch error 0x%x)\n", what.c_str(), static_cast<unsigned>(err));
  return 1;
}

static std::string dims(const executorch::runtime::Span<const int32_t>& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
  return out;
}

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: et_run MODEL.pte COUNT IN_PREFIX OUT_PREFIX\n");
    return 2;
  }
  const int count = std::atoi(argv[2]);
  Module module(argv[1], Module::LoadMode::File);
  if (Error err = module.load_forward(); err != Error::Ok) return fail("loading forward", err);
  auto meta = module.method_meta("forward");
  if (!meta.ok()) return fail("method_meta", meta.error());
  auto in = meta->input_tensor_meta(0);
  auto out_meta = meta->output_tensor_meta(0);
  if (!in.ok()) return fail("input_tensor_meta", in.error());
  if (!out_meta.ok()) return fail("output_tensor_meta", out_meta.error());
  std::printf("input %d %s\n", static_cast<int>(in->scalar_type()), dims(in->sizes()).c_str());
  std::printf("output %d %s\n", static_cast<int>(out_meta->scalar_type()), dims(out_meta->sizes()).c_str());
  std::vector<executorch::aten::SizesType> sizes(in->sizes().begin(), in->sizes().end());
  std::vector<char> buf(in->nbytes());
  for (int i = 0; i < count; ++i) {
    std::string in_path = std::string(argv[3]) + std::to_string(i) + ".bin";
    std::string out_path = std::string(argv[4]) + std::to_string(i) + ".bin";
    FILE* f = std::fopen(in_path.c_str(), "rb");
    if (!f) { std::fprintf(stderr, "et_run: cannot open %s\n", in_path.c_str()); return 1; }
    size_t got = std::fread(buf.data(), 1, buf.size(), f);
    bool extra = std::fgetc(f) != EOF;
    std::fclose(f);
    if (got != buf.size() || extra) {
      std::fprintf(stderr, "et_run: %s holds the wrong number of bytes (the input takes %zu)\n", in_path.c_str(), buf.size());
      return 1;
    }
    auto tensor = from_blob(buf.data(), sizes, in->scalar_type());
    auto result = module.forward(tensor);
    if (!result.ok()) return fail("forward", result.error());
    const auto& t = result->at(0).toTensor();
    FILE* o = std::fopen(out_path.c_str(), "wb");
    if (!o || std::fwrite(t.const_data_ptr(), 1, t.nbytes(), o) != t.nbytes()) {
      std::fprintf(stderr, "et_run: cannot write %s\n", out_path.c_str());
      return 1;
    }
    std::fclose(o);
  }
  std::printf("ran %d\n", count);
  std::printf("hwcap %lx %lx\n", getauxval(AT_HWCAP), getauxval(AT_HWCAP2));
  if (FILE* maps = std::fopen("/proc/self/maps", "r")) {
    char line[4096];
    while (std::fgets(line, sizeof line, maps)) {
      char range[64], perms[8], path[3072] = "";
      if (std::sscanf(line, "%63s %7s %*s %*s %*s %3071s", range, perms, path) >= 2 && perms[2] == 'x' && std::strstr(path, ".so"))
        std::printf("map %s %s\n", range, path);
    }
    std::fclose(maps);
  }
  return 0;
}
