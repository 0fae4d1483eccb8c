// Library root: defines the `partdist` operator namespace and a tiny Python module
// so that `import partdist._C` loads the shared library (and with it every
// TORCH_LIBRARY_FRAGMENT of the op families, and emulated.cpp's
// partdist_cuda_emulated namespace).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(partdist, m) {}

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "partdist compiled operators (registered as torch.ops.partdist.*)",
      -1,  // size
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
