"""The API's inference state: the model cache, one micro-batcher per loaded model, the threads
that run their batches (`predict_batch_concurrency`: a batch's tiles are read and copied while
another computes), and the memory budget that all predict requests in flight share."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from fastapi.concurrency import run_in_threadpool

from anyband.artifacts import MODEL_FILE
from anyband.batching import MicroBatcher
from anyband.paths import model_dir
from anyband.serving import MemoryBudget, ModelCache, ServedModel, load_served_model
from anyband.settings import Settings
from anyband.store import Model


class Serving:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache = ModelCache(settings.model_cache_size)
        self.memory = MemoryBudget(settings.max_predict_inflight_bytes)
        self.executor = ThreadPoolExecutor(
            max_workers=settings.predict_batch_concurrency, thread_name_prefix="anyband-inference"
        )
        self._batchers: dict[str, tuple[ServedModel, MicroBatcher]] = {}
        self._closing: set[asyncio.Task] = set()

    def loaded(self, model_id: str) -> ServedModel | None:
        """A model already in the cache: models never change once published, so a loaded one
        is served without asking the database again, as long as its file is still there (a
        model deleted through another API process is forgotten here too)."""
        served = self.cache.peek(model_id)
        if (
            served is not None
            and not (model_dir(self.settings.data_dir, model_id) / MODEL_FILE).exists()
        ):
            self.forget(model_id)
            return None
        return served

    def forget(self, model_id: str) -> None:
        """Stop serving a deleted model: out of the cache; its batcher, if any, answers what it
        holds and closes when the next batcher is asked for."""
        self.cache.discard(model_id)

    async def model(self, record: Model) -> ServedModel:
        folder = model_dir(self.settings.data_dir, record.id)
        fold = self.settings.fold_batch_norm
        return await run_in_threadpool(
            self.cache.get,
            record.id,
            lambda: load_served_model(record.id, folder, record.sha256, fold_batch_norm=fold),
        )

    def batcher(self, served: ServedModel) -> MicroBatcher:
        """The model's batcher. Not a coroutine: a request enters the batcher's `expecting()`
        before anything else runs, so a batcher closed for an evicted model still answers it."""
        current = self._batchers.get(served.model_id)
        if current is not None and current[0] is served:
            return current[1]
        for model_id, (_, stale) in list(self._batchers.items()):
            if model_id == served.model_id or model_id not in self.cache:
                # Evicted: its model's memory goes once the requests it holds are answered.
                del self._batchers[model_id]
                closing = asyncio.get_running_loop().create_task(stale.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
        batcher = MicroBatcher(
            served.predict,
            max_batch=self.settings.predict_max_batch,
            max_wait_s=self.settings.predict_batch_wait_ms / 1000,
            max_hold_s=self.settings.predict_batch_hold_ms / 1000,
            concurrency=self.settings.predict_batch_concurrency,
            executor=self.executor,
        )
        self._batchers[served.model_id] = (served, batcher)
        return batcher

    async def close(self) -> None:
        for _, batcher in self._batchers.values():
            await batcher.close()
        self._batchers.clear()
        await asyncio.gather(*self._closing)
        self.executor.shutdown(wait=False, cancel_futures=True)
