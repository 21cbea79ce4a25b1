// torchwire's C ABI over libtorch's AOTInductor package loader
// (torch::inductor::AOTIModelPackageLoader), for src/model/pt2/ffi.rs.
//
// Rules: extern "C" functions only; no C++ exception leaves this file (every entry point
// catches everything and returns an error string the caller frees with tw_pt2_free_str);
// tensors cross as `at::Tensor*`, the same pointer type tch's `Tensor` wraps, so outputs are
// heap tensors the Rust side owns and frees through tch.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/version.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace {

char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.data(), s.size());
    out[s.size()] = '\0';
  }
  return out;
}

// c10::Error's what() carries a C++ stack trace after the message; the message alone is
// what the log needs (the caller never shows it to clients either way).
std::string message_of(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) {
    return c->msg();
  }
  return e.what();
}

template <typename F>
int guarded(char** err, F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    if (err != nullptr) *err = dup(message_of(e));
  } catch (...) {
    if (err != nullptr) *err = dup("unknown C++ exception");
  }
  return 1;
}

// Entries joined as key \x1f value \x1e: metadata values are free text.
std::string join(const std::unordered_map<std::string, std::string>& m) {
  std::string out;
  for (const auto& [k, v] : m) {
    out += k;
    out += '\x1f';
    out += v;
    out += '\x1e';
  }
  return out;
}

}  // namespace

struct TwPt2 {
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
};

extern "C" {

void tw_pt2_free_str(char* s) { std::free(s); }

// The libtorch version this binary runs (TORCH_VERSION of the headers it was built with).
char* tw_pt2_torch_version() { return dup(TORCH_VERSION); }

// A package's metadata without loading its code. 0 = ok.
int tw_pt2_read_metadata(const char* path, char** out, char** err) {
  return guarded(err, [&] {
    auto m = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
    *out = dup(join(m));
  });
}

// Loads a package; `device_index` is the CUDA ordinal, -1 on the CPU. 0 = ok.
int tw_pt2_load(const char* path, int device_index, TwPt2** out, char** err) {
  return guarded(err, [&] {
    auto h = std::make_unique<TwPt2>();
    h->loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        path, "model", false, 1, static_cast<c10::DeviceIndex>(device_index));
    *out = h.release();
  });
}

void tw_pt2_free(TwPt2* h) {
  try {
    delete h;
  } catch (...) {
  }
}

// The loaded package's metadata. 0 = ok.
int tw_pt2_metadata(TwPt2* h, char** out, char** err) {
  return guarded(err, [&] { *out = dup(join(h->loader->get_metadata())); });
}

// The package's input and output pytree specs (JSON), joined by \x1e. 0 = ok.
int tw_pt2_call_spec(TwPt2* h, char** out, char** err) {
  return guarded(err, [&] {
    auto spec = h->loader->get_call_spec();
    std::string s;
    for (const auto& part : spec) {
      s += part;
      s += '\x1e';
    }
    *out = dup(s);
  });
}

// Runs the package on `n_in` tensors (borrowed). Writes up to `cap` new heap tensors to
// `outputs` (owned by the caller) and their count to `n_out`. 0 = ok.
int tw_pt2_run(TwPt2* h, at::Tensor* const* inputs, size_t n_in, at::Tensor** outputs, size_t cap,
               size_t* n_out, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> in;
    in.reserve(n_in);
    // The compiled kernels index their inputs as dense row-major without checking strides
    // (seen: a column-major input gave wrong numbers, not an error); a no-op when contiguous.
    for (size_t i = 0; i < n_in; ++i) in.push_back(inputs[i]->contiguous());
    std::vector<at::Tensor> out = h->loader->run(in);
    if (out.size() > cap) {
      throw std::runtime_error("the package returned " + std::to_string(out.size()) +
                               " outputs, more than the " + std::to_string(cap) + " expected");
    }
    for (size_t i = 0; i < out.size(); ++i) outputs[i] = new at::Tensor(std::move(out[i]));
    *n_out = out.size();
  });
}

}  // extern "C"
