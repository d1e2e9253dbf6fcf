/* The slice of onnxruntime's C API that e2edge's custom ops use, declared here so the
 * kernels build with nothing but a C compiler (no onnxruntime headers on the host).
 *
 * The custom-op ABI: onnxruntime calls RegisterCustomOps (custom_ops.c) with its
 * OrtApiBase; the OrtApi function table is used by index (the C API only appends, so the
 * positions hold in later versions); each op is an OrtCustomOp, version 16, declared
 * with the fields in the ABI's order. Helpers shared by the ops follow.
 */
#ifndef E2EDGE_ORT_CUSTOM_OP_H
#define E2EDGE_ORT_CUSTOM_OP_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct OrtStatus OrtStatus;
typedef struct OrtApi OrtApi; /* a table of function pointers, used by index below */
typedef struct OrtValue OrtValue;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtTensorShape OrtTensorShape;
typedef struct {
  const OrtApi *(*GetApi)(uint32_t version);
  const char *(*GetVersionString)(void);
} OrtApiBase;

enum { E2_ORT_FAIL = 1, E2_ORT_INVALID_ARGUMENT = 2 };
enum { E2_FLOAT = 1, E2_UINT8 = 2 };
/* positions in the OrtApi table (the C API only appends, so they hold in later versions) */
enum {
  API_CreateStatus = 0,
  API_CreateCustomOpDomain = 26,
  API_CustomOpDomain_Add = 27,
  API_AddCustomOpDomain = 28,
  API_GetTensorMutableData = 51,
  API_GetDimensionsCount = 61,
  API_GetDimensions = 62,
  API_GetTensorTypeAndShape = 65,
  API_KernelInfoGetAttribute_int64 = 86,
  API_KernelContext_GetInput = 90,
  API_KernelContext_GetOutput = 91,
  API_ReleaseTensorTypeAndShapeInfo = 99,
  API_KernelContext_ParallelFor = 274,
};
#define API_FN(api, index) (((void *const *)(api))[index])

typedef OrtStatus *(*CreateStatusFn)(int, const char *);
typedef OrtStatus *(*CreateCustomOpDomainFn)(const char *, OrtCustomOpDomain **);
typedef OrtStatus *(*CustomOpDomainAddFn)(OrtCustomOpDomain *, const void *);
typedef OrtStatus *(*AddCustomOpDomainFn)(OrtSessionOptions *, OrtCustomOpDomain *);
typedef OrtStatus *(*GetTensorMutableDataFn)(OrtValue *, void **);
typedef OrtStatus *(*GetDimensionsCountFn)(const OrtTensorShape *, size_t *);
typedef OrtStatus *(*GetDimensionsFn)(const OrtTensorShape *, int64_t *, size_t);
typedef OrtStatus *(*GetTensorTypeAndShapeFn)(const OrtValue *, OrtTensorShape **);
typedef OrtStatus *(*KernelInfoGetAttributeInt64Fn)(const OrtKernelInfo *, const char *, int64_t *);
typedef OrtStatus *(*KernelContextGetInputFn)(const OrtKernelContext *, size_t, const OrtValue **);
typedef OrtStatus *(*KernelContextGetOutputFn)(OrtKernelContext *, size_t, const int64_t *, size_t, OrtValue **);
typedef void (*ReleaseTensorShapeFn)(OrtTensorShape *);
typedef OrtStatus *(*ParallelForFn)(const OrtKernelContext *, void (*)(void *, size_t), size_t, size_t, void *);

/* OrtCustomOp, version 16: the fields in the ABI's order */
typedef struct E2CustomOp {
  uint32_t version;
  void *(*CreateKernel)(const struct E2CustomOp *, const OrtApi *, const OrtKernelInfo *);
  const char *(*GetName)(const struct E2CustomOp *);
  const char *(*GetExecutionProviderType)(const struct E2CustomOp *);
  int (*GetInputType)(const struct E2CustomOp *, size_t);
  size_t (*GetInputTypeCount)(const struct E2CustomOp *);
  int (*GetOutputType)(const struct E2CustomOp *, size_t);
  size_t (*GetOutputTypeCount)(const struct E2CustomOp *);
  void (*KernelCompute)(void *, OrtKernelContext *);
  void (*KernelDestroy)(void *);
  int (*GetInputCharacteristic)(const struct E2CustomOp *, size_t);
  int (*GetOutputCharacteristic)(const struct E2CustomOp *, size_t);
  int (*GetInputMemoryType)(const struct E2CustomOp *, size_t);
  int (*GetVariadicInputMinArity)(const struct E2CustomOp *);
  int (*GetVariadicInputHomogeneity)(const struct E2CustomOp *);
  int (*GetVariadicOutputMinArity)(const struct E2CustomOp *);
  int (*GetVariadicOutputHomogeneity)(const struct E2CustomOp *);
  OrtStatus *(*CreateKernelV2)(const struct E2CustomOp *, const OrtApi *, const OrtKernelInfo *, void **);
  OrtStatus *(*KernelComputeV2)(void *, OrtKernelContext *);
} E2CustomOp;

#define E2_TRY(call) do { OrtStatus *status_ = (call); if (status_) return status_; } while (0)
#define E2_MAX_RANK 8

static inline OrtStatus *e2_fail(const OrtApi *api, int code, const char *message) {
  return ((CreateStatusFn)API_FN(api, API_CreateStatus))(code, message);
}

/* An input's dimensions (at most E2_MAX_RANK) and data. */
static inline OrtStatus *e2_tensor(const OrtApi *api, const OrtValue *value, int64_t *dims,
                                   size_t *rank, void **data) {
  OrtTensorShape *shape = NULL;
  E2_TRY(((GetTensorTypeAndShapeFn)API_FN(api, API_GetTensorTypeAndShape))(value, &shape));
  OrtStatus *status = ((GetDimensionsCountFn)API_FN(api, API_GetDimensionsCount))(shape, rank);
  if (!status && *rank > E2_MAX_RANK) status = e2_fail(api, E2_ORT_INVALID_ARGUMENT, "e2edge op: rank above 8");
  if (!status) status = ((GetDimensionsFn)API_FN(api, API_GetDimensions))(shape, dims, *rank);
  ((ReleaseTensorShapeFn)API_FN(api, API_ReleaseTensorTypeAndShapeInfo))(shape);
  if (status) return status;
  return ((GetTensorMutableDataFn)API_FN(api, API_GetTensorMutableData))((OrtValue *)value, data);
}

/* The inputs' dimensions and data, in order. */
static inline OrtStatus *e2_inputs(const OrtApi *api, const OrtKernelContext *context, size_t count,
                                   int64_t dims[][E2_MAX_RANK], size_t *rank, void **data) {
  KernelContextGetInputFn input = (KernelContextGetInputFn)API_FN(api, API_KernelContext_GetInput);
  for (size_t i = 0; i < count; i++) {
    const OrtValue *value = NULL;
    E2_TRY(input(context, i, &value));
    E2_TRY(e2_tensor(api, value, dims[i], &rank[i], &data[i]));
  }
  return NULL;
}

/* Output 0, shaped as A ([..., K]) with its last dimension N; *rows = the product of A's
 * other dimensions. */
static inline OrtStatus *e2_matmul_output(const OrtApi *api, OrtKernelContext *context,
                                          const int64_t *a_dims, size_t a_rank, int64_t N,
                                          float **y, int64_t *rows) {
  int64_t out_dims[E2_MAX_RANK];
  memcpy(out_dims, a_dims, sizeof(int64_t) * a_rank);
  out_dims[a_rank - 1] = N;
  *rows = 1;
  for (size_t d = 0; d + 1 < a_rank; d++) *rows *= a_dims[d];
  OrtValue *output = NULL;
  E2_TRY(((KernelContextGetOutputFn)API_FN(api, API_KernelContext_GetOutput))(context, 0, out_dims, a_rank, &output));
  return ((GetTensorMutableDataFn)API_FN(api, API_GetTensorMutableData))(output, (void **)y);
}

/* A matmul kernel's state: the API table and the op's K and N attributes. */
typedef struct {
  const OrtApi *api;
  int64_t K, N;
  int fast;
} E2Kernel;

/* The op's K and N attributes. */
static inline OrtStatus *e2_k_and_n(const OrtApi *api, const OrtKernelInfo *info, int64_t *K, int64_t *N) {
  KernelInfoGetAttributeInt64Fn attribute = (KernelInfoGetAttributeInt64Fn)API_FN(api, API_KernelInfoGetAttribute_int64);
  E2_TRY(attribute(info, "K", K));
  return attribute(info, "N", N);
}

static inline OrtStatus *e2_parallel_for(const OrtApi *api, const OrtKernelContext *context,
                                         void (*fn)(void *, size_t), size_t tasks, void *work) {
  /* 0 batches: onnxruntime decides how its threads share the tasks */
  return ((ParallelForFn)API_FN(api, API_KernelContext_ParallelFor))(context, fn, tasks, 0, work);
}

/* The callbacks both ops share: CPU provider, one float output, every input required. */
static inline void e2_destroy_kernel(void *kernel) { free(kernel); }
static inline const char *e2_cpu_provider(const E2CustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static inline int e2_float_type(const E2CustomOp *op, size_t i) { (void)op; (void)i; return E2_FLOAT; }
static inline size_t e2_one_count(const E2CustomOp *op) { (void)op; return 1; }
static inline int e2_required(const E2CustomOp *op, size_t i) { (void)op; (void)i; return 0; /* INPUT_OUTPUT_REQUIRED */ }
static inline int e2_default_memory(const E2CustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static inline int e2_one(const E2CustomOp *op) { (void)op; return 1; }

/* Each op's table, returned by its file for custom_ops.c. */
const E2CustomOp *e2_int4_op(void);
const E2CustomOp *e2_fp32_op(void);

#endif
