"""KServe v2 `inference.GRPCInferenceService` over the daemon's models (Triton's protocol).

The same registry, slots, queues and drain as EdgeRuntime, spoken the way Triton
speaks, so `tritonclient.grpc`, perf_analyzer and KServe tooling work unchanged:

- LLM packages are decoupled models: ModelStreamInfer answers one request with one
  response per generated piece of text (BYTES `text_output`), each marked with the
  parameter `triton_final_response` false, and a last response marked true that
  carries `finish_reason`, token counts and timings as parameters (empty of outputs
  when the request set `triton_enable_empty_final_response`, as tritonclient's
  `enable_empty_final_response=True` does). ModelInfer, or `stream: false`, answers
  with the whole text at once. Inputs and parameters: kserve/convert.py. The prompt
  is text only, as Triton's LLM models take it: chat messages, rendered by the
  package's chat template, go through EdgeRuntime's Generate.
- Vision packages take one input (`image`): BYTES encoded images ([n]), or UINT8 /
  FP32 pixels ([H, W], [H, W, C] or [N, H, W, C], FP32 in [0, 1]); they answer FP32
  `probabilities` [n, classes]. A requested output with the parameter
  `classification: k` gets Triton's classification strings "score:index:label" instead.
- Errors: a unary call ends with the status the EdgeRuntime service would give; in
  ModelStreamInfer a failed request becomes a response with `error_message`
  ("INVALID_ARGUMENT: ...") and the stream goes on, as in Triton.
- Repository: RepositoryModelLoad / Unload need a `repository:` section in the config
  (else FAILED_PRECONDITION). A configured model reloads from its own path; another
  name loads from `<repository dir>/<name>/` only (runtime/repository.py).
- Statistics count what this service served, per model, since the daemon started.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import grpc
import numpy as np

import e2edge
from runtime.config import ModelConfig
from runtime.errors import E2edgeError, InvalidRequest, ModelNotFound
from runtime.proto.kserve import grpc_service_pb2 as kpb
from runtime.proto.kserve import grpc_service_pb2_grpc as kpb_grpc
from runtime.repository import check_model_name, find_package, list_packages
from runtime.server.core.decode_pool import ImageDecoding
from runtime.server.core.generation import Generation, StopCondition
from runtime.server.core.lifecycle import ModelLifecycle
from runtime.server.core.registry import ModelEntry, ModelRegistry, ModelState
from runtime.server.core.serving_state import ServingState
from runtime.server.guard.errors import abort_recorded, status_for
from runtime.server.guard.request_log import RequestRecord, log_request
from runtime.server.guard.unary import logged_unary
from runtime.server.kserve import convert as kc
from runtime.server.kserve import vision

SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
VERSION = "1"  # every model has one version
EXTENSIONS = ["model_configuration", "model_repository", "statistics", "parameters",
              "classification"]
FINAL = "triton_final_response"
EMPTY_FINAL = "triton_enable_empty_final_response"
VISION_INPUT = "image"
VISION_OUTPUT = "probabilities"
MAX_STREAM_REQUESTS = 64  # requests of one ModelStreamInfer call running at once

log = logging.getLogger("e2edge.server")


class RepositoryControlOff(E2edgeError):
    """RepositoryModelLoad/Unload without a `repository:` section (FAILED_PRECONDITION)."""


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def proto(self) -> kpb.StatisticDuration:
        return kpb.StatisticDuration(count=self.count, ns=self.ns)


@dataclass
class _ModelStats:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)


def _kind(entry: ModelEntry) -> str:
    return entry.manifest.get("kind", "") or "unknown"


class KServeServicer(kpb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: ModelRegistry, lifecycle: ModelLifecycle,
                 decoding: ImageDecoding, state: ServingState):
        self.registry = registry
        self.lifecycle = lifecycle  # repository load/unload; the config as last applied
        self.decoding = decoding  # where vision requests decode their images
        self.state = state  # the drain and the first load, shared with every service
        self.stats: dict[str, _ModelStats] = {}

    def _entry(self, name: str, version: str = "") -> ModelEntry:
        if version not in ("", VERSION):
            raise ModelNotFound(f"model {name!r} has no version {version!r} (only {VERSION})")
        return self.registry.get(name)

    # ---- health and metadata -------------------------------------------------------
    async def ServerLive(self, request, context) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> kpb.ServerReadyResponse:
        ready = (self.state.loaded and not self.state.draining
                 and any(e.state is ModelState.READY for e in self.registry))
        return kpb.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request, context) -> kpb.ModelReadyResponse:
        entry = self.registry.entries.get(request.name)
        ready = (entry is not None and entry.state is ModelState.READY
                 and request.version in ("", VERSION) and not self.state.draining)
        return kpb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(name="e2edge", version=e2edge.__version__,
                                          extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context) -> kpb.ModelMetadataResponse:
        return await self._unary(context, "ModelMetadata", request.name,
                                 lambda: self._metadata(self._entry(request.name,
                                                                    request.version)))

    async def ModelConfig(self, request, context) -> kpb.ModelConfigResponse:
        return await self._unary(context, "ModelConfig", request.name,
                                 lambda: kpb.ModelConfigResponse(config=self._config(
                                     self._entry(request.name, request.version))))

    def _metadata(self, entry: ModelEntry) -> kpb.ModelMetadataResponse:
        tensor = kpb.ModelMetadataResponse.TensorMetadata
        config = self._config(entry)
        names = {v: k.removeprefix("TYPE_") for k, v in kpb.DataType.items()}
        inputs = [tensor(name=i.name, datatype=names[i.data_type].replace("STRING", "BYTES"),
                         shape=list(i.dims)) for i in config.input]
        outputs = [tensor(name=o.name, datatype=names[o.data_type].replace("STRING", "BYTES"),
                          shape=list(o.dims)) for o in config.output]
        return kpb.ModelMetadataResponse(name=entry.name, versions=[VERSION],
                                         platform=config.platform, inputs=inputs,
                                         outputs=outputs)

    def _config(self, entry: ModelEntry) -> kpb.ModelConfig:
        kind = _kind(entry)
        config = kpb.ModelConfig(name=entry.name, platform=f"e2edge_{kind}",
                                 backend=entry.config.backend, max_batch_size=0)
        if kind == "llm":
            config.model_transaction_policy.decoupled = True
            config.input.add(name=kc.LLM_INPUT, data_type=kpb.TYPE_STRING, dims=[1])
            scalar_types = {"int": kpb.TYPE_INT32, "float": kpb.TYPE_FP32,
                            "bool": kpb.TYPE_BOOL}
            for name, (kind_name, _) in kc.LLM_OPTIONS.items():
                data_type = kpb.TYPE_UINT64 if name == "random_seed" else scalar_types[kind_name]
                config.input.add(name=name, data_type=data_type, dims=[1], optional=True)
            config.input.add(name=kc.STREAM, data_type=kpb.TYPE_BOOL, dims=[1], optional=True)
            config.input.add(name=kc.STOP_WORDS, data_type=kpb.TYPE_STRING, dims=[-1],
                             optional=True)
            config.output.add(name=kc.LLM_OUTPUT, data_type=kpb.TYPE_STRING, dims=[-1])
        elif kind == "vision":
            classes = len(entry.image_classifier().labels) if entry.model is not None else -1
            config.input.add(name=VISION_INPUT, data_type=kpb.TYPE_UINT8, dims=[-1, -1, -1])
            config.output.add(name=VISION_OUTPUT, data_type=kpb.TYPE_FP32, dims=[-1, classes])
        return config

    async def ModelStatistics(self, request, context) -> kpb.ModelStatisticsResponse:
        def build() -> kpb.ModelStatisticsResponse:
            names = [self._entry(request.name, request.version).name] if request.name \
                else list(self.registry.entries)
            response = kpb.ModelStatisticsResponse()
            for name in names:
                s = self.stats.get(name, _ModelStats())
                response.model_stats.add(
                    name=name, version=VERSION, last_inference=s.last_inference_ms,
                    inference_count=s.inference_count, execution_count=s.execution_count,
                    inference_stats=kpb.InferStatistics(
                        success=s.success.proto(), fail=s.fail.proto(), queue=s.queue.proto(),
                        compute_infer=s.compute_infer.proto()),
                )
            return response

        return await self._unary(context, "ModelStatistics", request.name, build)

    # ---- repository ----------------------------------------------------------------
    async def RepositoryIndex(self, request, context) -> kpb.RepositoryIndexResponse:
        def build() -> kpb.RepositoryIndexResponse:
            response = kpb.RepositoryIndexResponse()
            states = {ModelState.READY: "READY", ModelState.LOADING: "LOADING",
                      ModelState.FAILED: "UNAVAILABLE"}
            for entry in self.registry:
                if not request.ready or entry.state is ModelState.READY:
                    response.models.add(name=entry.name, version=VERSION,
                                        state=states[entry.state], reason=entry.error)
            repository = self.lifecycle.config.repository
            if repository is not None and not request.ready:
                for name in list_packages(repository, request.repository_name):
                    if name not in self.registry.entries:
                        response.models.add(name=name, state="UNAVAILABLE", reason="unloaded")
            return response

        return await self._unary(context, "RepositoryIndex", "", build)

    async def RepositoryModelLoad(self, request, context) -> kpb.RepositoryModelLoadResponse:
        async def load() -> kpb.RepositoryModelLoadResponse:
            config = self._repository_model(request)
            entry = await self.lifecycle.load(config)
            if entry.state is not ModelState.READY:
                raise InvalidRequest("model_name", f"failed to load {request.model_name!r}: "
                                                   f"{entry.error}")
            return kpb.RepositoryModelLoadResponse()

        return await logged_unary(context, "RepositoryModelLoad", request.model_name, load)

    async def RepositoryModelUnload(self, request, context) -> kpb.RepositoryModelUnloadResponse:
        async def unload() -> kpb.RepositoryModelUnloadResponse:
            self._repository_control()
            await self.lifecycle.unload(check_model_name(request.model_name))
            return kpb.RepositoryModelUnloadResponse()

        return await logged_unary(context, "RepositoryModelUnload", request.model_name,
                                       unload)

    def _repository_control(self):
        repository = self.lifecycle.config.repository
        if repository is None:
            raise RepositoryControlOff("repository load/unload is off: the daemon config "
                                       "has no `repository:` section")
        self.state.admit()
        return repository

    def _repository_model(self, request: kpb.RepositoryModelLoadRequest) -> ModelConfig:
        repository = self._repository_control()
        name = check_model_name(request.model_name)
        if request.parameters:
            # Triton's "config" and "file:" overrides would let a client upload a model.
            raise InvalidRequest("parameters", "are not supported: e2edge loads packages "
                                               "from the repository folders only")
        configured = next((m for m in self.lifecycle.config.models if m.name == name), None)
        if configured is not None and not request.repository_name:
            return configured
        loaded = self.registry.entries.get(name)
        path = find_package(repository, name, request.repository_name)
        if loaded is not None:  # keep its serving settings, take the repository's package
            return replace(loaded.config, path=path)
        return ModelConfig(name=name, path=path)

    # ---- inference -----------------------------------------------------------------
    async def ModelInfer(self, request: kpb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> kpb.ModelInferResponse:
        record = RequestRecord.begin("ModelInfer", model=request.model_name, peer=context.peer())
        stop = StopCondition.for_call(context)
        responses: list[kpb.ModelInferResponse] = []
        try:
            await self._infer(request, record, stop, streaming=False, emit=responses.append)
            # None only when the client left mid-generation: nobody reads the answer.
            return responses[-1] if responses else kpb.ModelInferResponse()
        except Exception as e:
            await abort_recorded(context, e, record)
        finally:
            stop.end()
            log_request(record)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[kpb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        out: asyncio.Queue[kpb.ModelStreamInferResponse | None] = asyncio.Queue()
        # The call ending stops every generation of it (the stream has no per-request deadline).
        stop = StopCondition.for_call(context, with_deadline=False)
        window = asyncio.Semaphore(MAX_STREAM_REQUESTS)
        tasks: set[asyncio.Task] = set()
        peer = context.peer()

        async def one(request: kpb.ModelInferRequest) -> None:
            record = RequestRecord.begin("ModelStreamInfer", model=request.model_name, peer=peer)
            try:
                await self._infer(request, record, stop, streaming=True,
                                  emit=lambda r: out.put_nowait(
                                      kpb.ModelStreamInferResponse(infer_response=r)))
            except asyncio.CancelledError:
                record.status = "CANCELLED"
                raise
            except Exception as e:  # this request fails; the stream goes on
                code, details, _ = status_for(e, record.request_id)
                record.status, record.error = code.name, details
                if code == grpc.StatusCode.INTERNAL:
                    log.error("request %s failed", record.request_id, exc_info=e)
                out.put_nowait(kpb.ModelStreamInferResponse(
                    error_message=f"{code.name}: {details}",
                    infer_response=kpb.ModelInferResponse(
                        model_name=request.model_name, model_version=VERSION, id=request.id)))
            finally:
                window.release()
                log_request(record)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()
                    task = asyncio.ensure_future(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                out.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (response := await out.get()) is not None:
                yield response
            await reader  # a failed read (malformed message) ends the call with its status
        finally:
            stop.end()
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _infer(self, request: kpb.ModelInferRequest, record: RequestRecord,
                     stop: StopCondition, streaming: bool,
                     emit: Callable[[kpb.ModelInferResponse], None]) -> None:
        received = time.monotonic()
        stats = None
        try:
            if request.id:
                record.request_id = request.id[:128]
            self.state.admit()
            if not request.model_name:
                raise InvalidRequest("model_name", "must name a model (see RepositoryIndex)")
            entry = self.registry.ready(self._entry(request.model_name,
                                                    request.model_version).name)
            stats = self.stats.setdefault(entry.name, _ModelStats())
            tensors = kc.input_tensors(request, self.lifecycle.config.max_message_bytes)
            if _kind(entry) == "llm":
                await self._generate(entry, request, tensors, record, stop, streaming, emit,
                                     stats, received)
            else:
                response = self._response(entry, request)
                await vision.classify(entry, request, tensors, response, stats, self.decoding)
                emit(response)
        except BaseException:
            if stats is not None:
                stats.fail.add(time.monotonic() - received)
            raise
        finally:
            record.latency_s = time.monotonic() - received
        if record.status != "OK":  # the client left; the generation stopped early
            stats.fail.add(record.latency_s)
            return
        stats.success.add(record.latency_s)
        stats.inference_count += 1
        stats.execution_count += 1
        stats.last_inference_ms = int(time.time() * 1e3)

    def _response(self, entry: ModelEntry, request: kpb.ModelInferRequest) \
            -> kpb.ModelInferResponse:
        return kpb.ModelInferResponse(model_name=entry.name, model_version=VERSION,
                                      id=request.id)

    async def _generate(self, entry: ModelEntry, request: kpb.ModelInferRequest,
                        tensors: dict[str, np.ndarray], record: RequestRecord,
                        stop: StopCondition, streaming: bool,
                        emit: Callable[[kpb.ModelInferResponse], None], stats: _ModelStats,
                        received: float) -> None:
        for output in request.outputs:
            if output.name != kc.LLM_OUTPUT:
                raise InvalidRequest("outputs", f"an LLM has one output, {kc.LLM_OUTPUT!r}; "
                                                f"got {output.name!r}")
        llm = kc.llm_request(tensors, request.parameters, streaming)
        if not llm.prompt:
            raise InvalidRequest(kc.LLM_INPUT, "must not be empty")
        empty_final = (request.parameters[EMPTY_FINAL].bool_param
                       if EMPTY_FINAL in request.parameters else False)
        generation = Generation(entry, llm.prompt, llm.params, stop)
        pieces: list[str] = []
        async for event in generation.events():
            if event.finish_reason == "cancelled":
                record.status = stop.cancelled_status(event)
                return
            final = event.finish_reason is not None
            if llm.stream and event.text and (not final or empty_final):
                response = self._response(entry, request)
                kc.add_output(response, kc.LLM_OUTPUT,
                              np.array([event.text.encode()], dtype=object), "BYTES")
                kc.set_parameter(response.parameters, FINAL, False)
                emit(response)
            elif not llm.stream:
                pieces.append(event.text)
            if final:
                response = self._response(entry, request)
                text = event.text if llm.stream else "".join(pieces)
                if not (llm.stream and empty_final):
                    kc.add_output(response, kc.LLM_OUTPUT,
                                  np.array([text.encode()], dtype=object), "BYTES")
                s = event.stats
                for key, value in (("finish_reason", event.finish_reason),
                                   ("prompt_tokens", s.prompt_tokens),
                                   ("completion_tokens", s.completion_tokens),
                                   ("time_to_first_token_s", s.time_to_first_token_s),
                                   ("decode_tokens_per_s", s.decode_tokens_per_s)):
                    kc.set_parameter(response.parameters, key, value)
                if streaming:
                    kc.set_parameter(response.parameters, FINAL, True)
                record.finish_reason = event.finish_reason
                record.prompt_tokens, record.completion_tokens = (s.prompt_tokens,
                                                                  s.completion_tokens)
                stats.queue.add(max(0.0, s.started_at - received))
                stats.compute_infer.add(s.finished_at - s.started_at)
                emit(response)

    # ---- plumbing ------------------------------------------------------------------
    async def _unary(self, context, method: str, model: str, build: Callable):
        async def run():
            return build()

        return await logged_unary(context, method, model, run)



def add_to_server(servicer: KServeServicer, server) -> KServeServicer:
    """Serve KServe v2 beside EdgeRuntime on `server` (the daemon's, guarded)."""
    kpb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return servicer
